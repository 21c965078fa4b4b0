//! `cauce init [DIR]`: writes a runnable example project (the files of
//! `examples/quickstart/`, embedded in the binary): a sales warehouse (shipped CSV exports
//! into a Parquet warehouse, with SQL), a daily sales pipeline of Python functions, a master
//! pipeline that runs it, and a seed-001 style JSON config.

use super::UserError;
use clap::Args;
use std::path::PathBuf;

/// `cauce init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder to create the project in (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
}

const FILES: &[(&str, &[u8])] = &[
    (
        "cauce.yaml",
        include_bytes!("../../examples/quickstart/cauce.yaml"),
    ),
    (
        "pipelines/daily_sales.yaml",
        include_bytes!("../../examples/quickstart/pipelines/daily_sales.yaml"),
    ),
    (
        "pipelines/master.yaml",
        include_bytes!("../../examples/quickstart/pipelines/master.yaml"),
    ),
    (
        "etl/__init__.py",
        include_bytes!("../../examples/quickstart/etl/__init__.py"),
    ),
    (
        "etl/sales.py",
        include_bytes!("../../examples/quickstart/etl/sales.py"),
    ),
    (
        "etl/legacy.py",
        include_bytes!("../../examples/quickstart/etl/legacy.py"),
    ),
    (
        "data/sales.csv",
        include_bytes!("../../examples/quickstart/data/sales.csv"),
    ),
    (
        "etl_config.json",
        include_bytes!("../../examples/quickstart/etl_config.json"),
    ),
    (
        "pipelines/sales_warehouse.yaml",
        include_bytes!("../../examples/quickstart/pipelines/sales_warehouse.yaml"),
    ),
    (
        "data/ventas/ventas_2024-09-16.csv",
        include_bytes!("../../examples/quickstart/data/ventas/ventas_2024-09-16.csv"),
    ),
    (
        "data/ventas/ventas_2024-09-17.csv",
        include_bytes!("../../examples/quickstart/data/ventas/ventas_2024-09-17.csv"),
    ),
    (
        "data/ventas/ventas_2024-09-18.csv",
        include_bytes!("../../examples/quickstart/data/ventas/ventas_2024-09-18.csv"),
    ),
    (
        "data/clientes.csv",
        include_bytes!("../../examples/quickstart/data/clientes.csv"),
    ),
    (
        "data/productos.xlsx",
        include_bytes!("../../examples/quickstart/data/productos.xlsx"),
    ),
    (".gitignore", b".cauce/\nresults/\nwarehouse/\n.env\n"),
];

/// `cauce init`.
pub fn run(args: &InitArgs) -> anyhow::Result<i32> {
    let existing: Vec<&str> = FILES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| args.dir.join(p).exists())
        .collect();
    if !existing.is_empty() && !args.force {
        return Err(UserError(format!(
            "{} already has {}; use --force to overwrite",
            args.dir.display(),
            existing.join(", ")
        ))
        .into());
    }
    for (path, text) in FILES {
        let target = args.dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, text)?;
    }
    // The server's operator token: random, kept out of version control (.gitignore), and
    // never overwritten (not even with --force).
    let dotenv = args.dir.join(".env");
    if !dotenv.exists() {
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        std::fs::write(&dotenv, format!("CAUCE_OPS_TOKEN={token}\n"))?;
    }
    let dir = args.dir.display();
    outln!("created a cauce project in {dir}");
    outln!("  run it:        cauce --project {dir} run sales_warehouse");
    outln!("  Python ETL:    cauce --project {dir} run daily_sales");
    outln!("  seed-001 JSON: cauce --project {dir} run --config {dir}/etl_config.json --workflow full_etl");
    outln!("  see runs:      cauce --project {dir} runs");
    outln!("  serve the API: cauce --project {dir} server   (operator token in {dir}/.env)");
    Ok(0)
}
