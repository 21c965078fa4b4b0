//! Query rewrites cauce adds to DataFusion's optimizer, for shapes of SQL that users of
//! the `sql` task write often and DataFusion plans slowly. Each rule keeps the query's
//! result and its output schema (names, types, nullability) exactly; what it changes is
//! only how the result is computed. This module owns the rules; [`super::session`]
//! registers them. It does not parse SQL or touch data.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{internal_err, Column, Result};
use datafusion::functions::expr_fn::coalesce;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::builder::project;
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{cast, lit, Aggregate, Expr, ExprSchemable, LogicalPlan};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use std::sync::Arc;

/// `COUNT(DISTINCT x)` (or any aggregate of `DISTINCT x`) beside `COUNT`, `SUM`, `MIN` or
/// `MAX` of other columns, as two grouped aggregations: first by the query's groups and
/// `x`, with the plain aggregates computed per `(groups, x)`, then by the query's groups,
/// where the distinct aggregate sees each `x` once and the plain ones are merged (a count
/// becomes the sum of its parts).
///
/// ```text
/// SELECT day, COUNT(*), COUNT(DISTINCT segment) FROM t GROUP BY day
/// -- becomes
/// SELECT day, COALESCE(SUM(n), 0), COUNT(segment)
/// FROM (SELECT day, segment, COUNT(*) AS n FROM t GROUP BY day, segment) GROUP BY day
/// ```
///
/// DataFusion's own `single_distinct_aggregation_to_group_by` does this only when the
/// other aggregates are `SUM`, `MIN` and `MAX`; with a `COUNT` among them it keeps one
/// set of distinct values per group, filled row by row, which made it the largest cost of
/// the benchmark's T2 (a join of 5 million sales grouped by day and country).
#[derive(Debug, Default)]
pub struct DistinctBesideCount;

/// What the names of the columns this rule adds start with.
const PREFIX: &str = "__cauce_";

/// The inner aggregation's name for the distinct argument.
const DISTINCT: &str = "__cauce_distinct";

/// Whether the aggregate expressions have the shape [`DistinctBesideCount`] rewrites: no
/// filters or orderings, every distinct aggregate over the same one argument, at least one
/// plain `COUNT`, and otherwise only plain `SUM`, `MIN` and `MAX`.
fn rewritable(aggr_expr: &[Expr]) -> bool {
    let mut distinct_arg: Option<&Expr> = None;
    let mut counts = false;
    for e in aggr_expr {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
            return false;
        };
        if params.filter.is_some() || !params.order_by.is_empty() {
            return false;
        }
        if params.distinct {
            match (params.args.as_slice(), distinct_arg) {
                ([arg], None) => distinct_arg = Some(arg),
                ([arg], Some(seen)) if arg == seen => {}
                _ => return false,
            }
        } else {
            match func.name() {
                "count" => counts = true,
                "sum" | "min" | "max" => {}
                _ => return false,
            }
        }
    }
    distinct_arg.is_some() && counts
}

impl OptimizerRule for DistinctBesideCount {
    fn name(&self) -> &str {
        "cauce_distinct_beside_count"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let agg = match plan {
            LogicalPlan::Aggregate(agg)
                if rewritable(&agg.aggr_expr)
                    && !matches!(agg.group_expr.first(), Some(Expr::GroupingSet(_)))
                    // The names this rule gives its columns cannot clash with the input's.
                    && !agg.input.schema().fields().iter().any(|f| f.name().starts_with(PREFIX)) =>
            {
                agg
            }
            plan => return Ok(Transformed::no(plan)),
        };
        let Aggregate {
            input,
            group_expr,
            aggr_expr,
            schema,
            ..
        } = agg;
        let groups = group_expr.len();
        // The final projection gives every output column its original name and type.
        let mut output = Vec::with_capacity(groups + aggr_expr.len());
        let mut inner_groups = Vec::with_capacity(groups + 1);
        let mut outer_groups = Vec::with_capacity(groups);
        for (i, g) in group_expr.into_iter().enumerate() {
            let (qualifier, field) = schema.qualified_field(i);
            // A column is grouped by as it is; an expression is computed once, below, and
            // referred to by name above.
            let (inner, reference) = match g {
                Expr::Column(c) => (Expr::Column(c.clone()), Expr::Column(c)),
                g => {
                    let name = format!("{PREFIX}group_{i}");
                    (g.alias(&name), Expr::Column(Column::from_name(name)))
                }
            };
            inner_groups.push(inner);
            outer_groups.push(reference.clone());
            output.push(reference.alias_qualified(qualifier.cloned(), field.name()));
        }
        let mut inner_aggr = Vec::new();
        let mut outer_aggr = Vec::with_capacity(aggr_expr.len());
        let mut distinct_grouped = false;
        for (j, e) in aggr_expr.into_iter().enumerate() {
            let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
                return internal_err!("{} saw a non-aggregate expression", self.name());
            };
            let AggregateFunctionParams {
                args,
                distinct,
                null_treatment,
                ..
            } = params;
            let plain_count = !distinct && func.name() == "count";
            let outer = if distinct {
                if !distinct_grouped {
                    let Some(arg) = args.into_iter().next() else {
                        return internal_err!("a DISTINCT aggregate without an argument");
                    };
                    inner_groups.push(arg.alias(DISTINCT));
                    distinct_grouped = true;
                }
                let arg = Expr::Column(Column::from_name(DISTINCT));
                AggregateFunction::new_udf(func, vec![arg], false, None, vec![], null_treatment)
            } else {
                let part = format!("{PREFIX}part_{j}");
                inner_aggr.push(
                    Expr::AggregateFunction(AggregateFunction::new_udf(
                        Arc::clone(&func),
                        args,
                        false,
                        None,
                        vec![],
                        null_treatment,
                    ))
                    .alias(&part),
                );
                let merge = if plain_count { sum_udaf() } else { func };
                let arg = Expr::Column(Column::from_name(part));
                AggregateFunction::new_udf(merge, vec![arg], false, None, vec![], None)
            };
            let outer = Expr::AggregateFunction(outer);
            let mut value = Expr::Column(Column::from_name(outer.schema_name().to_string()));
            if plain_count {
                // A group always has a part; a query without groups over no rows has none,
                // where COUNT is 0, not NULL.
                value = coalesce(vec![value, lit(0i64)]);
            }
            let (qualifier, field) = schema.qualified_field(groups + j);
            // SUM of SUMs widens a decimal's precision once more: back to the original type.
            let value = cast(value, field.data_type().clone());
            output.push(value.alias_qualified(qualifier.cloned(), field.name()));
            outer_aggr.push(outer);
        }
        let inner = Aggregate::try_new(input, inner_groups, inner_aggr)?;
        let outer = Aggregate::try_new(
            Arc::new(LogicalPlan::Aggregate(inner)),
            outer_groups,
            outer_aggr,
        )?;
        Ok(Transformed::yes(project(
            LogicalPlan::Aggregate(outer),
            output,
        )?))
    }
}

/// `CAST(ts AS DATE)` of a timestamp without a time zone or in UTC, as
/// [`super::timestamps::to_date`]: a division per value, where Arrow's cast builds a chrono
/// date for each (6% of the benchmark's T2, which groups 5 million sales by day). Applies
/// to the expressions of projections, filters, aggregations and sorts; the name each
/// expression had is kept (as an alias where the node's output shows it). Casts of other
/// types, and expressions of nodes with several inputs (join conditions), are left alone.
#[derive(Debug, Default)]
pub struct DateOfTimestamp;

impl OptimizerRule for DateOfTimestamp {
    fn name(&self) -> &str {
        "cauce_date_of_timestamp"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let schema = match (&plan, plan.inputs().as_slice()) {
            (
                LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Sort(_),
                [input],
            ) => Arc::clone(input.schema()),
            _ => return Ok(Transformed::no(plan)),
        };
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|expr| {
            // Grouping sets keep their own names.
            if matches!(expr, Expr::GroupingSet(_)) {
                return Ok(Transformed::no(expr));
            }
            let name = names.save(&expr);
            let rewritten = expr.transform_up(|e| {
                let Expr::Cast(c) = &e else {
                    return Ok(Transformed::no(e));
                };
                if *c.field.data_type() != DataType::Date32 {
                    return Ok(Transformed::no(e));
                }
                let Ok(from) = c.expr.get_type(schema.as_ref()) else {
                    return Ok(Transformed::no(e));
                };
                match super::timestamps::to_date(c.expr.as_ref().clone(), &from) {
                    Some(date) => Ok(Transformed::yes(date)),
                    None => Ok(Transformed::no(e)),
                }
            })?;
            Ok(if rewritten.transformed {
                rewritten.update_data(|e| name.restore(e))
            } else {
                rewritten
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    /// Orders of two days in three countries, with NULL segments and quantities.
    fn orders() -> MemTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Int64, true),
            Field::new("country", DataType::Utf8, true),
            Field::new("segment", DataType::Utf8, true),
            Field::new("quantity", DataType::Int64, true),
            Field::new("price", DataType::Decimal128(10, 2), true),
        ]));
        let n = 500;
        let day = Int64Array::from_iter((0..n).map(|i| Some(i % 2)));
        let country =
            StringArray::from_iter((0..n).map(|i| Some(["ES", "AR", "MX"][i as usize % 3])));
        let segment = StringArray::from_iter((0..n).map(|i| {
            (i % 7 != 0).then(|| ["retail", "online", "wholesale", "x"][(i as usize / 3) % 4])
        }));
        let quantity = Int64Array::from_iter((0..n).map(|i| (i % 5 != 0).then_some(i % 9)));
        let price = Decimal128Array::from_iter((0..n).map(|i| Some(i128::from(i * 37 % 10_000))))
            .with_precision_and_scale(10, 2)
            .unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(day),
                Arc::new(country),
                Arc::new(segment),
                Arc::new(quantity),
                Arc::new(price),
            ],
        )
        .unwrap();
        MemTable::try_new(schema, vec![vec![batch]]).unwrap()
    }

    /// How many aggregations a plan (as `display_indent` shows it) has.
    fn aggregations(plan: &str) -> usize {
        plan.matches("Aggregate:").count()
    }

    /// Timestamps around midnight and before 1970, without a zone (some NULL), in UTC (none
    /// NULL) and in Madrid.
    fn events() -> MemTable {
        let zoned = |tz: &str| DataType::Timestamp(TimeUnit::Microsecond, Some(tz.into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("tsz", zoned("UTC"), false),
            Field::new("madrid", zoned("Europe/Madrid"), true),
        ]));
        let hour = 3_600_000_000_i64;
        let at: Vec<i64> = (-30..30).map(|i| i * 7 * hour + i * 13).collect();
        let ts = TimestampMicrosecondArray::from_iter(
            at.iter()
                .enumerate()
                .map(|(i, v)| (i % 9 != 0).then_some(*v)),
        );
        let tsz = TimestampMicrosecondArray::from(at.clone()).with_timezone("UTC");
        let madrid = TimestampMicrosecondArray::from(at.clone()).with_timezone("Europe/Madrid");
        let id = Int64Array::from_iter_values(0..at.len() as i64);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(id), Arc::new(ts), Arc::new(tsz), Arc::new(madrid)],
        )
        .unwrap();
        MemTable::try_new(schema, vec![vec![batch]]).unwrap()
    }

    /// The query's plan and its result as a table, with and without the rule.
    async fn both(sql: &str) -> (String, String, String) {
        compare(Arc::new(DistinctBesideCount), sql).await
    }

    /// The query's plan and its result as a table, with and without `rule`.
    async fn compare(
        rule: Arc<dyn OptimizerRule + Send + Sync>,
        sql: &str,
    ) -> (String, String, String) {
        let mut out = Vec::new();
        for with_rule in [true, false] {
            let ctx = SessionContext::new();
            if with_rule {
                ctx.add_optimizer_rule(rule.clone());
            }
            ctx.register_table("t", Arc::new(orders())).unwrap();
            ctx.register_table("e", Arc::new(events())).unwrap();
            let df = ctx.sql(sql).await.unwrap();
            let plan = df.clone().into_optimized_plan().unwrap();
            let schema = format!("{:?}", plan.schema().as_arrow());
            let rows = pretty_format_batches(&df.collect().await.unwrap())
                .unwrap()
                .to_string();
            out.push((format!("{}", plan.display_indent()), schema, rows));
        }
        let (without_plan, without_schema, without_rows) = out.pop().unwrap();
        let (plan, schema, rows) = out.pop().unwrap();
        assert_eq!(
            schema, without_schema,
            "the rule changed the output schema of {sql}"
        );
        assert_eq!(rows, without_rows, "the rule changed the result of {sql}");
        (plan, without_plan, rows)
    }

    #[tokio::test]
    async fn count_distinct_beside_count_and_sums_is_two_aggregations_with_the_same_result() {
        let (plan, without, rows) = both(
            "SELECT day, upper(country) AS c, COUNT(*) AS orders, COUNT(quantity) AS counted,
                    COUNT(DISTINCT segment) AS segments, SUM(quantity * price) AS total,
                    MIN(price) AS low, MAX(segment) AS last
             FROM t GROUP BY day, upper(country) ORDER BY day, c",
        )
        .await;
        assert_eq!(aggregations(&plan), 2, "not rewritten:\n{plan}");
        assert_eq!(aggregations(&without), 1, "{without}");
        assert_eq!(rows.lines().count(), 6 + 4, "6 groups:\n{rows}");
    }

    #[tokio::test]
    async fn having_and_order_by_still_see_the_count() {
        let (plan, _, rows) = both(
            "SELECT country, COUNT(*) AS n, COUNT(DISTINCT segment) AS s FROM t
             GROUP BY country HAVING COUNT(*) > 166 ORDER BY COUNT(*) DESC, country",
        )
        .await;
        assert_eq!(aggregations(&plan), 2, "not rewritten:\n{plan}");
        assert_eq!(
            rows.lines().count(),
            2 + 4,
            "2 countries of 167 orders:\n{rows}"
        );
    }

    #[tokio::test]
    async fn without_groups_a_count_over_no_rows_stays_zero() {
        let (plan, _, rows) = both(
            "SELECT COUNT(*) AS n, COUNT(DISTINCT segment) AS s, SUM(price) AS p FROM t WHERE day > 5",
        )
        .await;
        assert_eq!(aggregations(&plan), 2, "not rewritten:\n{plan}");
        assert!(rows.contains("| 0 | 0 |"), "{rows}");
    }

    #[tokio::test]
    async fn odd_queries_keep_their_results() {
        // `both` fails if a query errs or its result or schema changes with the rule.
        for sql in [
            "SELECT COUNT(*), COUNT(DISTINCT NULL) FROM t",
            "SELECT day, COUNT(1), COUNT(*), COUNT(DISTINCT 'x') FROM t GROUP BY day ORDER BY day",
            "SELECT segment, COUNT(*), COUNT(DISTINCT segment) FROM t GROUP BY segment ORDER BY segment",
            "SELECT day, COUNT(*), COUNT(DISTINCT segment), SUM(DISTINCT segment IS NULL::int) FROM t GROUP BY day ORDER BY day",
            "SELECT n, rank() OVER (ORDER BY n) FROM (SELECT day, COUNT(*) AS n, COUNT(DISTINCT country) AS c FROM t GROUP BY day) ORDER BY n",
            "SELECT day, COUNT(*), COUNT(DISTINCT segment) FROM t GROUP BY ROLLUP (day) ORDER BY day",
            "SELECT * FROM (SELECT country, COUNT(*) AS n, COUNT(DISTINCT segment) AS s FROM t GROUP BY country) WHERE n > 0 ORDER BY country",
        ] {
            both(sql).await;
        }
    }

    #[tokio::test]
    async fn other_shapes_are_left_to_datafusion() {
        for sql in [
            // Two different distinct arguments.
            "SELECT day, COUNT(*), COUNT(DISTINCT segment), COUNT(DISTINCT country) FROM t GROUP BY day",
            // An aggregate that cannot be merged from parts.
            "SELECT day, COUNT(*), AVG(quantity), COUNT(DISTINCT segment) FROM t GROUP BY day",
            // Input columns named like the rule's own.
            "SELECT day, COUNT(*), COUNT(DISTINCT __cauce_distinct)
             FROM (SELECT day, segment AS __cauce_distinct FROM t) GROUP BY day",
            // A filter.
            "SELECT day, COUNT(*) FILTER (WHERE quantity > 2), COUNT(DISTINCT segment) FROM t GROUP BY day",
        ] {
            let (plan, _, _) = both(sql).await;
            assert_eq!(aggregations(&plan), 1, "{sql} was rewritten:\n{plan}");
        }
    }

    #[tokio::test]
    async fn dates_of_timestamps_keep_their_results_names_and_types() {
        let rule = || Arc::new(DateOfTimestamp);
        for sql in [
            "SELECT id, CAST(ts AS DATE), CAST(tsz AS DATE) AS d FROM e ORDER BY id",
            "SELECT CAST(ts AS DATE) AS day, COUNT(*) FROM e GROUP BY 1 ORDER BY 1",
            "SELECT CAST(tsz AS DATE), COUNT(*) AS n FROM e GROUP BY CAST(tsz AS DATE)
             HAVING CAST(tsz AS DATE) > DATE '1969-12-25' ORDER BY CAST(tsz AS DATE)",
            "SELECT id FROM e WHERE CAST(ts AS DATE) = DATE '1970-01-01' ORDER BY id",
            "SELECT MAX(CAST(ts AS DATE)), date_part('day', CAST(tsz AS DATE) + 1) AS x
             FROM e GROUP BY 2 ORDER BY 2",
            "SELECT * FROM (SELECT ts::date AS d FROM e) WHERE d IS NULL",
        ] {
            let (plan, without, _) = compare(rule(), sql).await;
            assert!(plan.contains("cauce_date_of_timestamp"), "{sql}:\n{plan}");
            assert!(!without.contains("cauce_date_of_timestamp"), "{without}");
        }
        for sql in [
            // A zone with its own rules is left to Arrow's cast.
            "SELECT CAST(madrid AS DATE) FROM e ORDER BY id",
            // Grouping sets keep their expressions.
            "SELECT CAST(ts AS DATE) FROM e GROUP BY ROLLUP (CAST(ts AS DATE)) ORDER BY 1",
        ] {
            let (plan, _, _) = compare(rule(), sql).await;
            assert!(!plan.contains("cauce_date_of_timestamp"), "{sql}:\n{plan}");
        }
    }
}
