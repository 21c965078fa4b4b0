//! The SMTP e-mail channel, through `lettre`: one plain-text message per alert to every
//! address in `to`. The server is a URL in lettre's form (`smtps://host:465`,
//! `smtp://host:587?tls=required`, `smtp://localhost:25` unencrypted); credentials are
//! separate fields so that they can come from `${VAR}` and need no URL encoding.

use super::{Alert, Channel, DeliveryError};
use crate::template::Templates;
use async_trait::async_trait;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

/// `email:` settings of a channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server as a URL.
    pub smtp: String,
    /// Sender address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// User name for SMTP AUTH.
    pub username: Option<String>,
    /// Password for SMTP AUTH (write `${VAR}`).
    pub password: Option<String>,
}

impl EmailConfig {
    pub(super) fn build(&self, templates: &Templates) -> Result<EmailChannel, String> {
        let url = templates.expand_env(&self.smtp)?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            .map_err(|e| format!("email.smtp: {e}"))?
            .timeout(Some(super::DELIVERY_TIMEOUT));
        if self.password.is_some() && self.username.is_none() {
            return Err("email: a `password` needs a `username`".into());
        }
        if let Some(user) = &self.username {
            let user = templates.expand_env(user)?;
            let pass = match &self.password {
                Some(p) => templates.expand_env(p)?,
                None => String::new(),
            };
            builder = builder.credentials(Credentials::new(user, pass));
        }
        let parse = |a: &str, field: &str| -> Result<Mailbox, String> {
            a.parse::<Mailbox>()
                .map_err(|e| format!("email.{field}: `{a}` is not an e-mail address ({e})"))
        };
        if self.to.is_empty() {
            return Err("email.to: give at least one recipient".into());
        }
        Ok(EmailChannel {
            transport: builder.build(),
            from: parse(&templates.expand_env(&self.from)?, "from")?,
            to: self
                .to
                .iter()
                .map(|a| templates.expand_env(a).and_then(|a| parse(&a, "to")))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Sends alerts as e-mail.
#[derive(Debug)]
pub struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

#[async_trait]
impl Channel for EmailChannel {
    fn kind(&self) -> &'static str {
        "email"
    }

    async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(alert.title())
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let message = builder
            .body(alert.text())
            .map_err(|e| DeliveryError(format!("cannot build the message: {e}")))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| DeliveryError(format!("SMTP: {e}")))
    }
}
