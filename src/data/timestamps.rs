//! Text to `timestamp` columns, and timestamps to dates, fast for what nearly every
//! pipeline has: text in the plain ISO shapes exports write (`2024-03-05 14:30:00`, with
//! `T` or a space, optional fractions of a second and an optional `Z`), timestamps without
//! a time zone or in UTC. This module owns the two conversions as engine functions:
//! [`parse`], which [`super::types::apply`] calls where a text column is declared
//! `timestamp`, and [`to_date`], which the optimizer rule [`super::rules::DateOfTimestamp`]
//! puts in place of `CAST(ts AS DATE)`. It does not read files, and it knows nothing of
//! formats (a column with a `format` goes through `to_timestamp_micros`).
//!
//! Arrow's own conversions go through chrono for each value: in the benchmark's T2 (5
//! million sales read, joined and grouped by day), parsing was 11% of the CPU and the
//! cast to a date 6%. Here a batch whose values all have a plain shape takes a few byte
//! comparisons per value, and a date is a division. If one value of a batch does not fit
//! (another shape of text; a timestamp beyond chrono's years), the whole batch is handed to
//! Arrow's cast, so the values accepted, the values refused and the error messages are
//! Arrow's own; the unit tests hold both paths to the same results.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Field, FieldRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::Expr;
use std::sync::Arc;

/// `text` (a `Utf8` expression) as `to`, if `to` is a microsecond timestamp (cauce's
/// `timestamp` and `timestamptz`); `None` for any other type, which the caller casts.
pub fn parse(text: Expr, to: &DataType) -> Option<Expr> {
    let DataType::Timestamp(TimeUnit::Microsecond, tz) = to else {
        return None;
    };
    let udf = ParseTimestamp {
        signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        tz: tz.clone(),
    };
    Some(ScalarUDF::new_from_impl(udf).call(vec![text]))
}

/// `CAST(ts AS DATE)`, if `ts` (of type `from`) is a microsecond timestamp without a time
/// zone or in UTC (the date of any other zone depends on the zone's rules: Arrow's cast
/// keeps those); `None` otherwise.
pub fn to_date(ts: Expr, from: &DataType) -> Option<Expr> {
    let DataType::Timestamp(TimeUnit::Microsecond, tz) = from else {
        return None;
    };
    if tz.as_deref().is_some_and(|z| z != "UTC") {
        return None;
    }
    let udf = TimestampToDate {
        signature: Signature::exact(vec![from.clone()], Volatility::Immutable),
    };
    Some(ScalarUDF::new_from_impl(udf).call(vec![ts]))
}

/// Whether [`parse`] converts text to `to` (a source may then read such columns as text).
pub fn parses(to: &DataType) -> bool {
    matches!(to, DataType::Timestamp(TimeUnit::Microsecond, _))
}

/// The engine function behind [`parse`].
#[derive(Debug, PartialEq, Eq, Hash)]
struct ParseTimestamp {
    signature: Signature,
    tz: Option<Arc<str>>,
}

impl ParseTimestamp {
    fn target(&self) -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, self.tz.clone())
    }

    fn convert(&self, text: &ArrayRef) -> Result<ArrayRef> {
        let fast = text
            .as_any()
            .downcast_ref::<StringArray>()
            .and_then(|s| plain(s).map(|a| a.with_timezone_opt(self.tz.clone())));
        match fast {
            Some(a) => Ok(Arc::new(a)),
            None => arrow_cast(text, &self.target()),
        }
    }
}

/// Arrow's cast, refusing what does not convert (as a SQL `CAST` does).
fn arrow_cast(values: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    Ok(cast_with_options(values, to, &options)?)
}

/// Calls `convert` on the argument of a one-argument function, an array or a constant.
fn invoke(
    args: ScalarFunctionArgs,
    convert: impl Fn(&ArrayRef) -> Result<ArrayRef>,
) -> Result<ColumnarValue> {
    let [arg] = args.args.as_slice() else {
        return exec_err!("the function takes one argument");
    };
    match arg {
        ColumnarValue::Array(a) => Ok(ColumnarValue::Array(convert(a)?)),
        ColumnarValue::Scalar(s) => {
            let out = convert(&s.to_array()?)?;
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        }
    }
}

/// A function's result field: `to`, null where its argument is.
fn result_field(name: &str, to: DataType, args: &ReturnFieldArgs) -> FieldRef {
    let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
    Arc::new(Field::new(name, to, nullable))
}

impl ScalarUDFImpl for ParseTimestamp {
    fn name(&self) -> &str {
        "cauce_parse_timestamp"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.target())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(result_field(self.name(), self.target(), &args))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        invoke(args, |a| self.convert(a))
    }
}

/// The engine function behind [`to_date`].
#[derive(Debug, PartialEq, Eq, Hash)]
struct TimestampToDate {
    signature: Signature,
}

impl ScalarUDFImpl for TimestampToDate {
    fn name(&self) -> &str {
        "cauce_date_of_timestamp"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(result_field(self.name(), DataType::Date32, &args))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        invoke(args, |a| {
            match a
                .as_primitive_opt::<TimestampMicrosecondType>()
                .and_then(dates)
            {
                Some(d) => Ok(Arc::new(d)),
                None => arrow_cast(a, &DataType::Date32),
            }
        })
    }
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The dates of microsecond timestamps, if all are within chrono's years (Arrow's cast
/// refuses the others).
fn dates(ts: &TimestampMicrosecondArray) -> Option<Date32Array> {
    let (lo, hi) = (
        chrono::NaiveDateTime::MIN.and_utc().timestamp_micros(),
        chrono::NaiveDateTime::MAX.and_utc().timestamp_micros(),
    );
    let (min, max) = ts
        .values()
        .iter()
        .fold((i64::MAX, i64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    if ts.is_empty() || (min >= lo && max <= hi) {
        // Within chrono's years, a day number fits in an i32.
        Some(ts.unary::<_, Date32Type>(|x| x.div_euclid(MICROS_PER_DAY) as i32))
    } else {
        None
    }
}

/// The whole array converted, if every value that is not null has a plain shape.
fn plain(text: &StringArray) -> Option<TimestampMicrosecondArray> {
    let data = text.value_data();
    let mut values = Vec::with_capacity(text.len());
    for (i, w) in text.value_offsets().windows(2).enumerate() {
        if text.is_null(i) {
            values.push(0);
            continue;
        }
        values.push(micros(data.get(w[0] as usize..w[1] as usize)?)?);
    }
    Some(TimestampMicrosecondArray::new(
        values.into(),
        text.nulls().cloned(),
    ))
}

/// `YYYY-MM-DD`, then optionally `T`, `t` or a space and `HH:MM:SS`, then optionally `.`
/// and 1 to 9 digits, then optionally `Z` or `z`: microseconds since 1970-01-01 (fractions
/// finer than a microsecond dropped, as Arrow does). `None` for anything else, including
/// dates and times that do not exist (Arrow's cast then says why).
fn micros(b: &[u8]) -> Option<i64> {
    let (date, rest) = b.split_first_chunk::<10>()?;
    if date[4] != b'-' || date[7] != b'-' {
        return None;
    }
    let year = two(date[0], date[1])? * 100 + two(date[2], date[3])?;
    let (month, day) = (two(date[5], date[6])?, two(date[8], date[9])?);
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let Some((time, mut rest)) = rest.split_first_chunk::<9>() else {
        return rest.is_empty().then_some(days * MICROS_PER_DAY);
    };
    if !matches!(time[0], b'T' | b't' | b' ') || time[3] != b':' || time[6] != b':' {
        return None;
    }
    let (h, m, s) = (
        two(time[1], time[2])?,
        two(time[4], time[5])?,
        two(time[7], time[8])?,
    );
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let mut frac = 0;
    if let [b'.', tail @ ..] = rest {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return None;
        }
        for (k, c) in tail[..n.min(6)].iter().enumerate() {
            frac += i64::from(c - b'0') * 10_i64.pow(5 - k as u32);
        }
        rest = &tail[n..];
    }
    if !matches!(rest, [] | [b'Z' | b'z']) {
        return None;
    }
    Some(days * MICROS_PER_DAY + (h * 3600 + m * 60 + s) * 1_000_000 + frac)
}

/// Two ASCII digits as a number.
fn two(hi: u8, lo: u8) -> Option<i64> {
    let (h, l) = (hi.wrapping_sub(b'0'), lo.wrapping_sub(b'0'));
    (h < 10 && l < 10).then(|| i64::from(h * 10 + l))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrow(values: &[Option<&str>], tz: Option<&str>) -> Result<ArrayRef> {
        let text: ArrayRef = Arc::new(StringArray::from(values.to_vec()));
        let to = DataType::Timestamp(TimeUnit::Microsecond, tz.map(Arc::from));
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        Ok(cast_with_options(&text, &to, &options)?)
    }

    fn ours(values: &[Option<&str>], tz: Option<&str>) -> Result<ArrayRef> {
        let udf = ParseTimestamp {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
            tz: tz.map(Arc::from),
        };
        udf.convert(&(Arc::new(StringArray::from(values.to_vec())) as ArrayRef))
    }

    /// Every value on its own, and all of them in one batch, give what Arrow's cast gives.
    fn same(values: &[&str]) {
        for tz in [None, Some("UTC")] {
            for v in values {
                let one = [Some(*v)];
                match (arrow(&one, tz), ours(&one, tz)) {
                    (Ok(a), Ok(b)) => assert_eq!(&a, &b, "{v}"),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{v}"),
                    (a, b) => panic!("{v}: arrow {a:?}, cauce {b:?}"),
                }
            }
        }
    }

    #[test]
    fn plain_shapes_match_arrow() {
        same(&[
            "2024-03-05 14:30:00",
            "2024-03-05T14:30:00",
            "2024-03-05t14:30:00",
            "2024-03-05 14:30:00Z",
            "2024-03-05 14:30:00z",
            "2024-03-05 14:30:00.5",
            "2024-03-05 14:30:00.123456",
            "2024-03-05 14:30:00.1234567",
            "2024-03-05 14:30:00.123456789Z",
            "2024-03-05",
            "1970-01-01 00:00:00",
            "1969-12-31 23:59:59.999999",
            "1900-02-28 12:00:00",
            "0001-01-01 00:00:00",
            "0000-03-01 00:00:00",
            "9999-12-31 23:59:59.999999",
            "2000-02-29 00:00:00",
            "2024-02-29 23:59:59",
        ]);
    }

    #[test]
    fn other_shapes_and_bad_values_are_arrow_s_own() {
        same(&[
            "2024-03-05 14:30:00+02:00",
            "2024-03-05T14:30:00-0530",
            "2024-03-05 14:30:60",
            "2024-03-05 14:30:00.1234567891",
            "2023-02-29 00:00:00",
            "1900-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-04-31",
            "2024-03-05 24:00:00",
            "2024-03-05 14:60:00",
            "2024-03-05 14:30",
            "2024-03-05 14:30:00.",
            "2024-03-05 14:30:00 ",
            " 2024-03-05",
            "2024-03-05x14:30:00",
            "2024/03/05",
            "05/03/2024",
            "yesterday",
            "",
            "2024-03-05 14:30:00ZZ",
        ]);
    }

    #[test]
    fn every_day_of_four_centuries_matches_arrow() {
        let mut values = vec![];
        for year in [1600, 1899, 1900, 1970, 1999, 2000, 2023, 2024, 2100, 2400] {
            for month in 1..=12 {
                for day in 1..=31 {
                    values.push(format!("{year:04}-{month:02}-{day:02} 07:08:09.010"));
                }
            }
        }
        let valid: Vec<Option<&str>> = values
            .iter()
            .map(|s| Some(s.as_str()))
            .filter(|v| arrow(&[*v], None).is_ok())
            .collect();
        assert!(valid.len() > 3600, "{}", valid.len());
        assert_eq!(&arrow(&valid, None).unwrap(), &ours(&valid, None).unwrap());
    }

    #[test]
    fn dates_of_timestamps_match_arrow() {
        let d = MICROS_PER_DAY;
        let values = vec![
            Some(0),
            Some(-1),
            Some(d - 1),
            Some(d),
            Some(-d),
            Some(-d - 1),
            None,
            Some(1_709_648_400_123_456),
            Some(-62_135_596_800_000_000),
            Some(253_402_300_799_999_999),
        ];
        for tz in [None, Some("UTC")] {
            let ts = TimestampMicrosecondArray::from(values.clone()).with_timezone_opt(tz);
            let ts: ArrayRef = Arc::new(ts);
            let ours = dates(ts.as_primitive()).unwrap();
            assert_eq!(
                &arrow_cast(&ts, &DataType::Date32).unwrap(),
                &(Arc::new(ours) as ArrayRef)
            );
        }
        // Beyond chrono's years Arrow refuses, and so the function does.
        let far: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![
            Some(0),
            Some(i64::MAX),
        ]));
        assert!(dates(far.as_primitive()).is_none());
        assert!(arrow_cast(&far, &DataType::Date32).is_err());
        // Other zones are left to Arrow's cast.
        let madrid = DataType::Timestamp(TimeUnit::Microsecond, Some("Europe/Madrid".into()));
        assert!(to_date(datafusion::prelude::lit(1), &madrid).is_none());
        let nanos = DataType::Timestamp(TimeUnit::Nanosecond, None);
        assert!(to_date(datafusion::prelude::lit(1), &nanos).is_none());
    }

    #[test]
    fn a_batch_keeps_its_nulls_and_one_odd_value_sends_it_all_to_arrow() {
        let batch = [
            Some("2024-03-05 14:30:00"),
            None,
            Some("2024-03-05 09:00:00+01:00"),
        ];
        let b = ours(&batch, None).unwrap();
        assert_eq!(&arrow(&batch, None).unwrap(), &b);
        assert!(b.is_null(1));
        let bad = [Some("2024-03-05 14:30:00"), Some("2024-03-05 99:00:00")];
        let e = ours(&bad, None).unwrap_err().to_string();
        assert!(e.contains("2024-03-05 99:00:00"), "{e}");
        let tz = ours(&[Some("2024-03-05")], Some("UTC")).unwrap();
        assert_eq!(
            tz.data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
    }
}
