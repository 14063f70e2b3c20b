//! Latency reports, as tables and files: what a `loadgen` run leaves behind, and what
//! `tallyd report` renders from the daemon's stage histograms.
//!
//! - `latency.hgrm`: the percentile distribution in HdrHistogram's text format (what
//!   `HistogramLogProcessor` and the standard plotter read), values in milliseconds;
//! - `latency.hlog`: an interval log (HdrHistogram log format V2), one histogram per
//!   second, values in microseconds;
//! - `summary.json`: offered and accepted load, counts, and the percentiles;
//! - `latency.svg`: latency by percentile, the percentile axis log-scaled.
//!
//! Latency is recorded in microseconds from each batch's *intended* send time, so a
//! stalled server shows up as the latency its clients would have seen (coordinated
//! omission corrected); the service time (from the actual send) is kept beside it.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::Serialize;

/// A histogram of microseconds, from 1 µs to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// The percentiles of the table, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Percentiles {
    /// The percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles::of_unit(h, 1000.0)
    }

    /// The percentiles of a histogram whose values are `per_ms` to the millisecond
    /// (1000 for microseconds, 1,000,000 for nanoseconds).
    pub fn of_unit(h: &Histogram<u64>, per_ms: f64) -> Percentiles {
        let ms = |v: u64| v as f64 / per_ms;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            p9999: ms(h.value_at_quantile(0.9999)),
            max: ms(h.max()),
            mean: h.mean() / per_ms,
            count: h.len(),
        }
    }

    /// The table, as printed at the end of a run.
    pub fn table(&self, title: &str) -> String {
        format!(
            "{title:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n{:<28} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "p99.99 ms",
            "max ms",
            "",
            self.p50,
            self.p90,
            self.p99,
            self.p999,
            self.p9999,
            self.max
        )
    }
}

/// Writes `h` (microseconds) as HdrHistogram's percentile distribution, in milliseconds,
/// with 5 reporting ticks per half distance, as `outputPercentileDistribution` does.
pub fn write_hgrm(h: &Histogram<u64>, out: &mut impl Write) -> std::io::Result<()> {
    write_hgrm_unit(h, 1000.0, out)
}

/// [`write_hgrm`] for a histogram whose values are `per_ms` to the millisecond.
pub fn write_hgrm_unit(h: &Histogram<u64>, per_ms: f64, out: &mut impl Write) -> std::io::Result<()> {
    let scale = per_ms;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    if h.is_empty() {
        return writeln!(out, "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]", 0.0, 0.0);
    }
    for v in h.iter_quantiles(5) {
        let value = h.highest_equivalent(v.value_iterated_to()) as f64 / scale;
        let q = v.quantile_iterated_to();
        let count = (q * h.len() as f64).round() as u64;
        if q < 1.0 {
            writeln!(
                out,
                "{value:>12.3} {q:>2.12} {count:>10} {:>14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value:>12.3} {q:>2.12} {count:>10}")?;
        }
    }
    writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / scale,
        h.stdev() / scale
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / scale,
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        // As the Java implementation: the smallest power of two ≥ 2 × 10^significant digits.
        (2.0 * 10f64.powi(i32::from(h.sigfig()))).log2().ceil().exp2() as u64
    )
}

/// One second of a run: its start (seconds since the run began) and its histogram.
pub struct Interval {
    pub start_secs: f64,
    pub histogram: Histogram<u64>,
}

/// Writes the intervals as an HdrHistogram V2 interval log (values in microseconds).
pub fn write_hlog(
    intervals: &[Interval],
    start: std::time::SystemTime,
    out: &mut impl Write,
) -> Result<(), String> {
    let mut serializer = V2DeflateSerializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment("tallyman loadgen: batch latency from the intended send time, microseconds")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1000.0)
        .begin_log_with(out, &mut serializer)
        .map_err(|e| e.to_string())?;
    let tag = Tag::new("latency");
    for i in intervals {
        writer
            .write_histogram(
                &i.histogram,
                std::time::Duration::from_secs_f64(i.start_secs),
                std::time::Duration::from_secs(1),
                tag,
            )
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

/// Draws latency by percentile (log-scaled percentile axis) for each histogram of
/// microseconds.
pub fn write_svg(series: &[(&str, &Histogram<u64>)], path: &Path) -> Result<(), String> {
    write_svg_unit(series, 1000.0, path)
}

/// [`write_svg`] for histograms whose values are `per_ms` to the millisecond.
pub fn write_svg_unit(series: &[(&str, &Histogram<u64>)], per_ms: f64, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    // x = log10(1 / (1 - q)): 0 at p0, 1 at p90, 2 at p99, …, 5 at p99.999.
    let points = |h: &Histogram<u64>| -> Vec<(f64, f64)> {
        h.iter_quantiles(5)
            .filter(|v| v.quantile_iterated_to() < 1.0)
            .map(|v| {
                let q = v.quantile_iterated_to();
                (
                    (1.0 / (1.0 - q)).log10(),
                    h.highest_equivalent(v.value_iterated_to()) as f64 / per_ms,
                )
            })
            .collect()
    };
    let all: Vec<Vec<(f64, f64)>> = series.iter().map(|(_, h)| points(h)).collect();
    let max_y = all.iter().flatten().map(|p| p.1).fold(0.001f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency by percentile", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..5f64, 0f64..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(6)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            5 => "99.999%".into(),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [RED, BLUE, GREEN, BLACK, MAGENTA, CYAN];
    for (i, ((name, _), pts)) in series.iter().zip(all).enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn the_hgrm_lists_percentiles_up_to_the_max() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap(); // 1 ms … 1000 ms
        }
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let first = text.lines().nth(2).unwrap();
        assert!(first.trim_start().starts_with("1.000 0.000000000000"), "{first}");
        let last = text.lines().rev().nth(3).unwrap();
        assert!(last.contains(" 1.000000000000       1000"), "{text}");
        assert!(
            text.contains("#[Max     =     1000.447, Total count    =         1000]"),
            "{text}"
        );
    }

    #[test]
    fn the_interval_log_reads_back_with_the_hdrhistogram_crate() {
        let mut intervals = Vec::new();
        for s in 0..3u64 {
            let mut h = histogram();
            for v in 0..100 {
                h.record(1000 + s * 100 + v).unwrap();
            }
            intervals.push(Interval {
                start_secs: s as f64,
                histogram: h,
            });
        }
        let mut log = Vec::new();
        write_hlog(
            &intervals,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
            &mut log,
        )
        .unwrap();
        let mut deserializer = Deserializer::new();
        let mut read = Vec::new();
        for entry in IntervalLogIterator::new(&log) {
            if let Ok(LogEntry::Interval(i)) = entry {
                let bytes = base64_decode(i.encoded_histogram());
                let h: Histogram<u64> = deserializer.deserialize(&mut bytes.as_slice()).unwrap();
                read.push((i.start_timestamp(), h.len(), h.max()));
            }
        }
        assert_eq!(read.len(), 3);
        assert_eq!(read[2].1, 100);
        assert_eq!(intervals[2].histogram.max(), read[2].2);
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let mut buf = 0u32;
        let mut bits = 0;
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = table.iter().position(|&t| t == c).unwrap() as u32;
            buf = (buf << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
                buf &= (1 << bits) - 1;
            }
        }
        out
    }
}
