//! The benchmark's plot: sender CPU per byte against payload size, one
//! panel per transport, and beside each the cost of every mode relative to
//! (a) SENDMSG, where a line under 1 is a mode that costs less than
//! copying: the crossover where zero-copy starts to pay.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::report::{Cell, Key};
use super::UNIT_NOTE;

const TRANSPORTS: [(&str, &str); 2] = [
    ("udp-dummy", "UDP through dummy"),
    ("tcp-virtio", "TCP over virtio-net"),
];
/// Payloads on a log2 axis, 32 B to 1 MiB: the header-only shape (0
/// bytes) has no place there and is in the table instead.
const X_RANGE: std::ops::Range<f64> = 5.0..20.0;
/// A colour per mode, in the table's mode order (a..h).
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One panel's lines: per mode, (payload, value) for one pair per request.
type Lines = Vec<(String, Vec<(f64, f64)>)>;

fn modes(cells: &BTreeMap<Key, Cell>) -> Vec<String> {
    let mut modes: Vec<String> = cells.keys().map(|k| k.3.clone()).collect();
    modes.sort();
    modes.dedup();
    modes
}

/// CPU per byte, and the same divided by (a)'s, per mode on `transport`.
fn lines(cells: &BTreeMap<Key, Cell>, transport: &str, modes: &[String]) -> (Lines, Lines) {
    let mut absolute = Vec::new();
    let mut relative = Vec::new();
    for mode in modes {
        let mut abs = Vec::new();
        let mut rel = Vec::new();
        for ((t, batch, payload, m), cell) in cells {
            if t != transport || *batch != 1 || *payload == 0 || m != mode {
                continue;
            }
            let x = (*payload as f64).log2();
            abs.push((x, cell.cpu_per_byte));
            let a = cells.get(&(t.clone(), 1, *payload, "a_sendmsg".to_string()));
            if let Some(a) = a.filter(|a| a.cpu_per_byte > 0.0) {
                rel.push((x, cell.cpu_per_byte / a.cpu_per_byte));
            }
        }
        absolute.push((mode.clone(), abs));
        relative.push((mode.clone(), rel));
    }
    (absolute, relative)
}

/// A log range that holds every y of `lines`, widened to whole decades.
fn y_range(lines: &Lines) -> std::ops::Range<f64> {
    let ys = lines.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.1));
    let (lo, hi) = ys
        .filter(|y| *y > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
    if !lo.is_finite() {
        return 0.1..10.0;
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    lo..hi
}

/// The payload at `x` on the log2 axis.
fn bytes_label(x: &f64) -> String {
    match 2f64.powf(*x).round() as u64 {
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    lines: &Lines,
    modes: &[String],
    reference: Option<f64>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e| anyhow!("drawing the plot: {e:?}");
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(X_RANGE, y_range(lines).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("payload per pair (log scale)")
        .x_labels(8)
        .y_desc(y_desc)
        .x_label_formatter(&bytes_label)
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(err)?;
    if let Some(y) = reference {
        let ends = vec![(X_RANGE.start, y), (X_RANGE.end, y)];
        chart
            .draw_series(LineSeries::new(ends, BLACK.mix(0.5)))
            .map_err(err)?;
    }
    for (mode, pts) in lines {
        let i = modes.iter().position(|m| m == mode).unwrap_or_default();
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, colour.filled())))
            .map_err(err)?;
    }
    Ok(())
}

/// The legend in a column of its own, clear of every panel.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    modes: &[String],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e| anyhow!("drawing the legend: {e:?}");
    area.draw(&Text::new("mode", (10, 40), ("sans-serif", 15)))
        .map_err(err)?;
    for (i, mode) in modes.iter().enumerate() {
        let y = 70 + 24 * i as i32;
        let colour = COLOURS[i % COLOURS.len()];
        area.draw(&PathElement::new(
            vec![(10, y), (40, y)],
            colour.stroke_width(3),
        ))
        .map_err(err)?;
        area.draw(&Text::new(mode.as_str(), (48, y - 7), ("sans-serif", 14)))
            .map_err(err)?;
    }
    Ok(())
}

/// The SVG text of the plot, one pair per request.
pub fn svg(cells: &BTreeMap<Key, Cell>) -> Result<String> {
    let modes = modes(cells);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1280, 900)).into_drawing_area();
        let err = |e| anyhow!("drawing the plot: {e:?}");
        root.fill(&WHITE).map_err(err)?;
        let title = format!("Sender CPU, 24 B header + payload, 1 pair per request ({UNIT_NOTE})");
        let root = root.titled(&title, ("sans-serif", 16)).map_err(err)?;
        let (grid, side) = root.split_horizontally(1080);
        let panels = grid.split_evenly((2, 2));
        for (row, (transport, name)) in TRANSPORTS.iter().enumerate() {
            let (absolute, relative) = lines(cells, transport, &modes);
            panel(
                &panels[row * 2],
                &format!("{name}: CPU per byte"),
                "ns per byte (guest instructions)",
                &absolute,
                &modes,
                None,
            )?;
            panel(
                &panels[row * 2 + 1],
                &format!("{name}: relative to (a) SENDMSG"),
                "CPU per byte / (a)'s (1 = as copying)",
                &relative,
                &modes,
                Some(1.0),
            )?;
        }
        legend(&side, &modes)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::report::cells_of_csv;
    use super::*;

    /// Three modes over three payloads on both transports; (e) crosses
    /// (a) between 64 B and 4 KiB.
    fn csv() -> String {
        let mut csv = String::from(
            "transport,mode,payload,batch,rep,requests,bytes,wall_ns,cpu_ns,zero_copy\n",
        );
        for t in ["udp-dummy", "tcp-virtio"] {
            for (mode, per_byte) in [
                ("a_sendmsg", [4.0, 1.5, 1.4]),
                ("e_iov_mixed4", [6.0, 0.8, 0.2]),
            ] {
                for (payload, cost) in [64usize, 4096, 65536].into_iter().zip(per_byte) {
                    let bytes = 10 * (24 + payload);
                    let cpu = (cost * bytes as f64) as u64;
                    csv.push_str(&format!(
                        "{t},{mode},{payload},1,0,10,{bytes},1000,{cpu},yes\n"
                    ));
                }
            }
        }
        csv
    }

    #[test]
    fn one_panel_per_transport_and_one_relative_to_a() {
        let svg = svg(&cells_of_csv(&csv()).unwrap()).unwrap();
        for text in [
            "UDP through dummy: CPU per byte",
            "UDP through dummy: relative to (a) SENDMSG",
            "TCP over virtio-net: CPU per byte",
            "TCP over virtio-net: relative to (a) SENDMSG",
            "payload per pair (log scale)",
            "ns per byte (guest instructions)",
            "e_iov_mixed4",
            "4 KiB",
        ] {
            assert!(svg.contains(text), "no '{text}' in the plot");
        }
        // The legend names each mode once, beside its panels.
        assert_eq!(svg.matches(">\na_sendmsg\n<").count(), 1);
    }

    #[test]
    fn the_relative_panel_divides_by_a() {
        let cells = cells_of_csv(&csv()).unwrap();
        let modes = modes(&cells);
        let (_, relative) = lines(&cells, "tcp-virtio", &modes);
        let (_, e) = relative.iter().find(|(m, _)| m == "e_iov_mixed4").unwrap();
        let ratios: Vec<f64> = e.iter().map(|p| (p.1 * 100.0).round() / 100.0).collect();
        assert_eq!(ratios, [1.5, 0.53, 0.14]);
    }
}
