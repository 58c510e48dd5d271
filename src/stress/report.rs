//! The stress tool's table, as markdown (printed and written by `--out`), in the shape of the
//! classic lab report: one row per model and step. `stress/mod.rs` fills it; `chart.rs` draws it.

use std::fmt::Write as _;

use super::driver::LoadResult;
use super::target::ServerDelta;

/// One model at one step.
#[derive(Debug, Clone)]
pub struct StepRow {
    /// `pool`, `fork`, `baseline`, or the address of a server not started by the tool.
    pub model: String,
    /// Clients in the step.
    pub clients: usize,
    /// Clients at once.
    pub concurrency: usize,
    /// What the clients saw.
    pub load: LoadResult,
    /// What the server counted, when it answers STATS.
    pub server: Option<ServerDelta>,
}

fn ms(duration: std::time::Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The header and separator lines of the table.
pub fn header() -> String {
    let columns = [
        "model",
        "clients",
        "conc.",
        "ok",
        "refused",
        "reset",
        "timeout",
        "busy",
        "protocol",
        "other",
        "srv accepted",
        "srv served",
        "srv busy",
        "srv timeouts",
        "srv errors",
        "time (s)",
        "req/s",
        "p50 (ms)",
        "p95 (ms)",
        "p99 (ms)",
        "peak RSS (MiB)",
        "threads / procs",
    ];
    let mut out = format!("| {} |\n", columns.join(" | "));
    out.push('|');
    for column in columns {
        let dashes = "-".repeat(column.len().max(3));
        let _ = write!(out, " {dashes}:|");
    }
    out.push('\n');
    out
}

/// One row of the table.
pub fn row(step: &StepRow) -> String {
    let load = &step.load;
    let errors = &load.errors;
    let mut cells = vec![
        step.model.clone(),
        step.clients.to_string(),
        step.concurrency.to_string(),
        load.ok.to_string(),
        errors.refused.to_string(),
        errors.reset.to_string(),
        errors.timeout.to_string(),
        errors.busy.to_string(),
        errors.protocol.to_string(),
        errors.other.to_string(),
    ];
    match &step.server {
        Some(server) => cells.extend([
            server.accepted.to_string(),
            server.served.to_string(),
            server.busy.to_string(),
            server.timeouts.to_string(),
            server.errors.to_string(),
        ]),
        None => cells.extend(std::iter::repeat_n("-".to_owned(), 5)),
    }
    cells.extend([
        format!("{:.2}", load.elapsed.as_secs_f64()),
        format!("{:.0}", load.throughput()),
        ms(load.percentile(50.0)),
        ms(load.percentile(95.0)),
        ms(load.percentile(99.0)),
    ]);
    match &step.server {
        Some(server) if server.peak_children > 0 || step.model == "fork" => {
            cells.push(format!(
                "{} (child {})",
                mib(server.peak_rss_kib),
                mib(server.peak_child_rss_kib)
            ));
            cells.push(format!("1 + {} children", server.peak_children));
        }
        Some(server) => {
            cells.push(mib(server.peak_rss_kib));
            cells.push(format!("{} threads", server.threads));
        }
        None => cells.extend(["-".to_owned(), "-".to_owned()]),
    }
    format!("| {} |\n", cells.join(" | "))
}

/// The whole table.
pub fn table(steps: &[StepRow]) -> String {
    let mut out = header();
    for step in steps {
        out.push_str(&row(step));
    }
    out
}

/// A markdown report: a title, how it was run, the table, and a note on the columns.
pub fn markdown(title: &str, setup: &str, steps: &[StepRow]) -> String {
    format!(
        "# {title}\n\n{setup}\n\n{}\n\
         Client columns (`ok` … `other`) are what the clients saw: `refused` connection refused, \
         `reset` connection reset or broken before the whole answer, `timeout` no whole answer in \
         time, `busy` `KILN/1 ERROR busy`, `protocol` an answer cut short or not KILN/1, `other` \
         another error. `srv` columns are the server's STATS counters over the step (the STATS \
         requests themselves left out); `srv errors` sums bad-request, too-large, unauthorized, \
         unsupported-language, unavailable and internal. Latencies are connect to end of answer \
         of successful clients. Peak RSS is the server process's VmHWM (for the fork model, the \
         parent's, and in brackets the largest child's); threads are the server's at the end of \
         the step, children the most alive at once.\n",
        table(steps)
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rows_have_as_many_cells_as_the_header() {
        let step = StepRow {
            model: "fork".into(),
            clients: 100,
            concurrency: 10,
            load: LoadResult {
                ok: 100,
                latencies_us: vec![1000; 100],
                elapsed: Duration::from_millis(500),
                ..LoadResult::default()
            },
            server: Some(ServerDelta {
                accepted: 100,
                served: 100,
                peak_children: 10,
                peak_rss_kib: 2048,
                ..ServerDelta::default()
            }),
        };
        let cells = |line: &str| line.matches('|').count();
        let header = header();
        let first = header.lines().next().expect("header line");
        let line = row(&step);
        assert_eq!(cells(first), cells(&line));
        assert!(line.contains("| 200 |"), "{line}");
        assert!(line.contains("1 + 10 children"), "{line}");
        let without_stats = row(&StepRow {
            server: None,
            ..step
        });
        assert_eq!(cells(first), cells(&without_stats));
    }
}
