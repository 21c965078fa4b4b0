//! `source: calendar`: generates a date dimension (seed 004's `dim_fecha`), one row a day
//! from `start` to `end` inclusive: `date_key` (`20260105`), `date`, `year`, `quarter`,
//! `month`, `month_name`, `day`, `day_of_year`, `day_of_week` (ISO: 1 Monday .. 7 Sunday),
//! `day_name`, `iso_year`, `iso_week`, `is_weekend`, `is_holiday`, `holiday_name`. Names
//! are in Spanish (`language: es`) or English (`en`, the default). `holidays` lists dates,
//! or maps dates to names. Unless `unknown_member: false`, a row with `date_key` -1 and
//! null date stands for facts with no date. At most 100,000 days. Loaded like any dataset
//! (`load` with `mode: upsert, keys: [date_key]`).

use super::{Source, SourceContext};
use crate::data::DataError;
use crate::spec::error::SpecError;
use crate::tasks::BuildContext;
use crate::template::Escape;
use crate::warehouse::UNKNOWN_KEY;
use async_trait::async_trait;
use chrono::{Datelike, NaiveDate, Weekday};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Int32Builder, RecordBatch, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::DataFrame;
use indexmap::IndexMap;
use marked_yaml::Node;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// The most days one calendar holds.
const MAX_DAYS: i64 = 100_000;

/// Names of months and weekdays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Language {
    En,
    Es,
}

impl Language {
    fn month(self, m: u32) -> &'static str {
        const EN: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        const ES: [&str; 12] = [
            "enero",
            "febrero",
            "marzo",
            "abril",
            "mayo",
            "junio",
            "julio",
            "agosto",
            "septiembre",
            "octubre",
            "noviembre",
            "diciembre",
        ];
        let i = (m.clamp(1, 12) - 1) as usize;
        match self {
            Language::En => EN[i],
            Language::Es => ES[i],
        }
    }

    fn weekday(self, d: Weekday) -> &'static str {
        const EN: [&str; 7] = [
            "Monday",
            "Tuesday",
            "Wednesday",
            "Thursday",
            "Friday",
            "Saturday",
            "Sunday",
        ];
        const ES: [&str; 7] = [
            "lunes",
            "martes",
            "miércoles",
            "jueves",
            "viernes",
            "sábado",
            "domingo",
        ];
        let i = d.num_days_from_monday() as usize;
        match self {
            Language::En => EN[i],
            Language::Es => ES[i],
        }
    }

    fn unknown(self) -> &'static str {
        match self {
            Language::En => "Unknown",
            Language::Es => "Desconocido",
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Holidays {
    Dates(Vec<String>),
    Named(IndexMap<String, String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarSpec {
    start: String,
    end: String,
    language: Option<Language>,
    holidays: Option<Holidays>,
    unknown_member: Option<bool>,
}

/// The `calendar` source.
#[derive(Debug)]
pub struct CalendarSource {
    start: String,
    end: String,
    language: Language,
    /// Holiday dates and names (a plain date's name is null).
    holidays: HashMap<NaiveDate, Option<String>>,
    unknown_member: bool,
}

fn date(text: &str, what: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| format!("{what} `{text}` is not a date (YYYY-MM-DD)"))
}

/// Builds from `start`, `end`, `language`, `holidays`, `unknown_member`.
pub fn build(node: &Node, cx: &BuildContext) -> Result<Arc<dyn Source>, SpecError> {
    let spec: CalendarSpec = cx.decode(node)?;
    let mut holidays = HashMap::new();
    let entries: Vec<(String, Option<String>)> = match spec.holidays {
        None => Vec::new(),
        Some(Holidays::Dates(v)) => v.into_iter().map(|d| (d, None)).collect(),
        Some(Holidays::Named(m)) => m.into_iter().map(|(d, n)| (d, Some(n))).collect(),
    };
    for (d, name) in entries {
        let day = date(&d, "holiday").map_err(|e| cx.error(node, e))?;
        holidays.insert(day, name);
    }
    let source = CalendarSource {
        start: spec.start,
        end: spec.end,
        language: spec.language.unwrap_or(Language::En),
        holidays,
        unknown_member: spec.unknown_member.unwrap_or(true),
    };
    if !source.start.contains("{{") && !source.end.contains("{{") {
        source
            .range(&source.start, &source.end)
            .map_err(|e| cx.error(node, e))?;
    }
    Ok(Arc::new(source))
}

impl CalendarSource {
    fn range(&self, start: &str, end: &str) -> Result<(NaiveDate, NaiveDate), String> {
        let s = date(start, "`start`")?;
        let e = date(end, "`end`")?;
        if e < s {
            return Err(format!("`end` ({e}) is before `start` ({s})"));
        }
        if (e - s).num_days() + 1 > MAX_DAYS {
            return Err(format!(
                "{s} to {e} is more than {MAX_DAYS} days; a calendar holds at most that"
            ));
        }
        Ok((s, e))
    }

    fn batch(&self, start: NaiveDate, end: NaiveDate) -> Result<RecordBatch, DataError> {
        let n = ((end - start).num_days() + 2) as usize;
        let lang = self.language;
        let mut key = Int32Builder::with_capacity(n);
        let mut day = Date32Builder::with_capacity(n);
        let ints = || Int32Builder::with_capacity(n);
        let (mut year, mut quarter, mut month, mut dom, mut doy, mut dow, mut iso_y, mut iso_w) = (
            ints(),
            ints(),
            ints(),
            ints(),
            ints(),
            ints(),
            ints(),
            ints(),
        );
        let mut month_name = StringBuilder::with_capacity(n, n * 8);
        let mut day_name = StringBuilder::with_capacity(n, n * 8);
        let mut holiday_name = StringBuilder::new();
        let mut weekend = BooleanBuilder::with_capacity(n);
        let mut holiday = BooleanBuilder::with_capacity(n);
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        if self.unknown_member {
            key.append_value(UNKNOWN_KEY as i32);
            day.append_null();
            for b in [
                &mut year,
                &mut quarter,
                &mut month,
                &mut dom,
                &mut doy,
                &mut dow,
                &mut iso_y,
                &mut iso_w,
            ] {
                b.append_null();
            }
            month_name.append_value(lang.unknown());
            day_name.append_value(lang.unknown());
            weekend.append_null();
            holiday.append_null();
            holiday_name.append_null();
        }
        for d in start.iter_days().take_while(|d| *d <= end) {
            key.append_value(d.year() * 10_000 + d.month() as i32 * 100 + d.day() as i32);
            day.append_value((d - epoch).num_days() as i32);
            year.append_value(d.year());
            quarter.append_value(((d.month() - 1) / 3 + 1) as i32);
            month.append_value(d.month() as i32);
            month_name.append_value(lang.month(d.month()));
            dom.append_value(d.day() as i32);
            doy.append_value(d.ordinal() as i32);
            dow.append_value(d.weekday().number_from_monday() as i32);
            day_name.append_value(lang.weekday(d.weekday()));
            let iso = d.iso_week();
            iso_y.append_value(iso.year());
            iso_w.append_value(iso.week() as i32);
            weekend.append_value(matches!(d.weekday(), Weekday::Sat | Weekday::Sun));
            match self.holidays.get(&d) {
                Some(name) => {
                    holiday.append_value(true);
                    holiday_name.append_option(name.as_deref());
                }
                None => {
                    holiday.append_value(false);
                    holiday_name.append_null();
                }
            }
        }
        let int = |n: &str| Field::new(n, DataType::Int32, true);
        let text = |n: &str| Field::new(n, DataType::Utf8, true);
        let flag = |n: &str| Field::new(n, DataType::Boolean, true);
        let schema = Schema::new(vec![
            Field::new("date_key", DataType::Int32, false),
            Field::new("date", DataType::Date32, true),
            int("year"),
            int("quarter"),
            int("month"),
            text("month_name"),
            int("day"),
            int("day_of_year"),
            int("day_of_week"),
            text("day_name"),
            int("iso_year"),
            int("iso_week"),
            flag("is_weekend"),
            flag("is_holiday"),
            text("holiday_name"),
        ]);
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(key.finish()),
            Arc::new(day.finish()),
            Arc::new(year.finish()),
            Arc::new(quarter.finish()),
            Arc::new(month.finish()),
            Arc::new(month_name.finish()),
            Arc::new(dom.finish()),
            Arc::new(doy.finish()),
            Arc::new(dow.finish()),
            Arc::new(day_name.finish()),
            Arc::new(iso_y.finish()),
            Arc::new(iso_w.finish()),
            Arc::new(weekend.finish()),
            Arc::new(holiday.finish()),
            Arc::new(holiday_name.finish()),
        ];
        RecordBatch::try_new(Arc::new(schema), arrays)
            .map_err(|e| DataError::Invalid(format!("building the calendar: {e}")))
    }
}

#[async_trait]
impl Source for CalendarSource {
    fn describe(&self) -> String {
        format!("calendar {} to {}", self.start, self.end)
    }

    async fn read(&self, cx: &SourceContext<'_>) -> Result<DataFrame, DataError> {
        let render = |t: &str| cx.task.render_data(t, Escape::Plain);
        let (start, end) = self
            .range(&render(&self.start)?, &render(&self.end)?)
            .map_err(DataError::Invalid)?;
        let batch = self.batch(start, end)?;
        cx.session
            .read_batch(batch)
            .map_err(|e| DataError::from_datafusion("the calendar", e))
    }
}
