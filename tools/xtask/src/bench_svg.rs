//! A grouped bar chart as hand-written SVG (no dependency): one panel per backend, one group of
//! bars per workload, one bar per memory mode, the value written on each bar. The value axis is
//! logarithmic when the values span more than [`LOG_SPAN`]; the scale is shared by all panels so
//! that backends compare at a glance. A missing value (a failed run) still gets its bar: an empty
//! outline at the baseline, labelled `failed`.

use std::fmt::Write;

/// Above this ratio of the largest to the smallest positive value, the axis is logarithmic.
pub const LOG_SPAN: f64 = 50.0;

/// Fill colours of the series, in order (then repeated).
const COLOURS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

const BAR_WIDTH: f64 = 30.0;
const GROUP_GAP: f64 = 34.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 70.0;
const PLOT_HEIGHT: f64 = 220.0;
/// Below each panel's plot: group labels and the panel's gap.
const PANEL_FOOT: f64 = 70.0;
const PANEL_HEAD: f64 = 30.0;

pub struct Chart {
    pub title: String,
    pub value_label: String,
    pub group_label: String,
    /// The names of the series (one bar of each per group), for the legend.
    pub series: Vec<String>,
    pub panels: Vec<Panel>,
}

pub struct Panel {
    pub title: String,
    pub groups: Vec<Group>,
}

pub struct Group {
    pub label: String,
    /// One value per series; `None` for a run without a value (drawn as a failed bar).
    pub values: Vec<Option<u64>>,
}

enum Scale {
    Linear { top: f64 },
    Log { low: f64, high: f64 },
}

impl Scale {
    fn for_values(values: impl Iterator<Item = u64> + Clone) -> Self {
        let max = values.clone().max().unwrap_or(0) as f64;
        let min_positive = values.filter(|&v| v > 0).min().map(|v| v as f64);
        match min_positive {
            Some(min) if max / min > LOG_SPAN => {
                let low = 10f64.powi(min.log10().floor() as i32);
                let high = 10f64.powi(max.log10().ceil() as i32).max(low * 10.0);
                Scale::Log { low, high }
            }
            _ => Scale::Linear {
                top: nice_ceiling(max),
            },
        }
    }

    /// The fraction of the plot's height at which `value` lies (0 = baseline).
    fn fraction(&self, value: u64) -> f64 {
        match *self {
            Scale::Linear { top } => value as f64 / top,
            Scale::Log { .. } if value == 0 => 0.0,
            Scale::Log { low, high } => {
                ((value as f64).log10() - low.log10()) / (high.log10() - low.log10())
            }
        }
        .clamp(0.0, 1.0)
    }

    fn ticks(&self) -> Vec<f64> {
        match *self {
            Scale::Linear { top } => (0..=4).map(|i| top * i as f64 / 4.0).collect(),
            Scale::Log { low, high } => {
                let mut ticks = Vec::new();
                let mut t = low;
                while t <= high * 1.0001 {
                    ticks.push(t);
                    t *= 10.0;
                }
                ticks
            }
        }
    }

    fn is_log(&self) -> bool {
        matches!(self, Scale::Log { .. })
    }
}

/// The smallest of 1, 2, 2.5, 5 × 10^k at or above `value` (1 for 0).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let base = 10f64.powi(value.log10().floor() as i32);
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * base)
        .find(|&c| c >= value)
        .unwrap_or(10.0 * base)
}

/// `1234567` → `1.23M`, `15015` → `15.0k`, `40000` → `40k`, `837` → `837`.
pub fn compact(value: f64) -> String {
    let a = value.abs();
    let (scaled, suffix) = if a >= 1e9 {
        (value / 1e9, "G")
    } else if a >= 1e6 {
        (value / 1e6, "M")
    } else if a >= 1e3 {
        (value / 1e3, "k")
    } else {
        return format!("{}", value.round());
    };
    if scaled.abs() >= 100.0 || scaled.fract() == 0.0 {
        format!("{scaled:.0}{suffix}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}{suffix}")
    } else {
        format!("{scaled:.2}{suffix}")
    }
}

/// Escapes text for SVG content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The chart as a standalone SVG document. Every bar is a `<rect class="bar …">`.
pub fn render(chart: &Chart) -> String {
    let series = chart.series.len().max(1);
    let groups = chart
        .panels
        .iter()
        .map(|p| p.groups.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let group_width = series as f64 * BAR_WIDTH + GROUP_GAP;
    let width = (LEFT + groups as f64 * group_width + RIGHT).max(520.0);
    let panel_height = PANEL_HEAD + PLOT_HEIGHT + PANEL_FOOT;
    let height = TOP + chart.panels.len().max(1) as f64 * panel_height;
    let values = chart
        .panels
        .iter()
        .flat_map(|p| &p.groups)
        .flat_map(|g| g.values.iter().flatten().copied());
    let scale = Scale::for_values(values);

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\">"
    );
    let _ = writeln!(
        s,
        "<rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"white\"/>"
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.0}\" y=\"24\" font-size=\"16\" text-anchor=\"middle\">{}</text>",
        width / 2.0,
        escape(&chart.title)
    );
    // Legend: one swatch per series.
    let mut x = LEFT;
    for (i, name) in chart.series.iter().enumerate() {
        let _ = writeln!(
            s,
            "<rect class=\"swatch\" x=\"{x:.0}\" y=\"36\" width=\"12\" height=\"12\" fill=\"{}\"/>",
            COLOURS[i % COLOURS.len()]
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.0}\" y=\"46\" font-size=\"12\">{}</text>",
            x + 16.0,
            escape(name)
        );
        x += 24.0 + 8.0 * name.chars().count() as f64;
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.0}\" y=\"46\" font-size=\"11\" fill=\"#555\">{} scale</text>",
        x + 10.0,
        if scale.is_log() { "log" } else { "linear" }
    );

    for (p, panel) in chart.panels.iter().enumerate() {
        let top = TOP + p as f64 * panel_height;
        let plot_top = top + PANEL_HEAD;
        let base = plot_top + PLOT_HEIGHT;
        let _ = writeln!(s, "<g class=\"panel\">");
        let _ = writeln!(
            s,
            "<text x=\"{LEFT:.0}\" y=\"{:.0}\" font-size=\"13\" font-weight=\"bold\">{}</text>",
            top + 18.0,
            escape(&panel.title)
        );
        // Value axis: ticks and grid lines, the axis label.
        for tick in scale.ticks() {
            let y = base - scale.fraction(tick.round() as u64) * PLOT_HEIGHT;
            let _ = writeln!(
                s,
                "<line x1=\"{LEFT:.0}\" y1=\"{y:.1}\" x2=\"{:.0}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>",
                width - RIGHT
            );
            let _ = writeln!(
                s,
                "<text x=\"{:.0}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
                LEFT - 6.0,
                y + 3.0,
                compact(tick)
            );
        }
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT:.0}\" y1=\"{plot_top:.0}\" x2=\"{LEFT:.0}\" y2=\"{base:.0}\" stroke=\"black\"/>"
        );
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT:.0}\" y1=\"{base:.0}\" x2=\"{:.0}\" y2=\"{base:.0}\" stroke=\"black\"/>",
            width - RIGHT
        );
        let mid = plot_top + PLOT_HEIGHT / 2.0;
        let _ = writeln!(
            s,
            "<text x=\"18\" y=\"{mid:.0}\" font-size=\"12\" text-anchor=\"middle\" \
             transform=\"rotate(-90 18 {mid:.0})\">{}</text>",
            escape(&chart.value_label)
        );
        for (g, group) in panel.groups.iter().enumerate() {
            let gx = LEFT + GROUP_GAP / 2.0 + g as f64 * group_width;
            for (i, value) in group.values.iter().enumerate() {
                let x = gx + i as f64 * BAR_WIDTH;
                let colour = COLOURS[i % COLOURS.len()];
                let cx = x + BAR_WIDTH / 2.0 - 1.0;
                match value {
                    Some(v) => {
                        let h = scale.fraction(*v) * PLOT_HEIGHT;
                        let _ = writeln!(
                            s,
                            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
                             height=\"{h:.1}\" fill=\"{colour}\"/>",
                            x,
                            base - h,
                            BAR_WIDTH - 2.0
                        );
                        let _ = writeln!(
                            s,
                            "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"9\" \
                             text-anchor=\"middle\">{}</text>",
                            base - h - 3.0,
                            compact(*v as f64)
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            "<rect class=\"bar failed\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
                             height=\"0\" fill=\"none\" stroke=\"{colour}\"/>",
                            x,
                            base,
                            BAR_WIDTH - 2.0
                        );
                        let _ = writeln!(
                            s,
                            "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#c00\" \
                             transform=\"rotate(-90 {cx:.1} {:.1})\">failed</text>",
                            base - 4.0,
                            base - 4.0
                        );
                    }
                }
            }
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
                gx + group.values.len() as f64 * BAR_WIDTH / 2.0,
                base + 16.0,
                escape(&group.label)
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
            LEFT + (width - LEFT - RIGHT) / 2.0,
            base + 36.0,
            escape(&chart.group_label)
        );
        let _ = writeln!(s, "</g>");
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Checks that every tag is closed in order; returns the number of elements.
    pub fn balanced(svg: &str) -> Result<usize, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut elements = 0;
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..]
                .find('>')
                .ok_or_else(|| "unterminated tag".to_string())?
                + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            elements += 1;
            if tag.contains('<') {
                return Err(format!("`<` inside tag `{tag}`"));
            }
            if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or_default();
                stack.push(name.to_string());
            }
        }
        if stack.is_empty() {
            Ok(elements)
        } else {
            Err(format!("unclosed: {stack:?}"))
        }
    }

    fn chart(values: [[Option<u64>; 2]; 3]) -> Chart {
        Chart {
            title: "exits <per> run & mode".into(),
            value_label: "VM exits".into(),
            group_label: "workload".into(),
            series: vec!["nested".into(), "shadow".into()],
            panels: vec![
                Panel {
                    title: "svm".into(),
                    groups: values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Group {
                            label: format!("w{i}"),
                            values: v.to_vec(),
                        })
                        .collect(),
                },
                Panel {
                    title: "vmx".into(),
                    groups: vec![Group {
                        label: "w0".into(),
                        values: vec![Some(5), None],
                    }],
                },
            ],
        }
    }

    #[test]
    fn well_formed_with_one_bar_per_value() {
        let svg = render(&chart([
            [Some(837), Some(40_000)],
            [Some(600), None],
            [Some(0), Some(1_000_000)],
        ]));
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(balanced(&svg).unwrap() > 20);
        assert_eq!(svg.matches("<rect class=\"bar").count(), 8);
        assert_eq!(svg.matches("<rect class=\"bar failed\"").count(), 2);
        assert_eq!(svg.matches(">failed</text>").count(), 2);
        assert!(svg.contains("log scale"), "values span 5 decades");
        assert!(svg.contains(">40k</text>") && svg.contains(">837</text>"));
        assert!(svg.contains("exits &lt;per&gt; run &amp; mode"));
        for legend in [
            ">nested</text>",
            ">shadow</text>",
            ">svm</text>",
            ">vmx</text>",
        ] {
            assert!(svg.contains(legend), "{legend}");
        }
    }

    #[test]
    fn linear_when_values_are_close() {
        let mut close = chart([
            [Some(800), Some(900)],
            [Some(600), Some(650)],
            [Some(700), Some(750)],
        ]);
        close.panels[1].groups[0].values = vec![Some(700), None];
        let svg = render(&close);
        assert!(svg.contains("linear scale"));
        balanced(&svg).unwrap();
        // No values at all still makes a valid document.
        let empty = render(&Chart {
            title: "t".into(),
            value_label: "v".into(),
            group_label: "g".into(),
            series: vec![],
            panels: vec![],
        });
        assert_eq!(balanced(&empty).unwrap(), 4);
    }

    #[test]
    fn the_balance_checker_catches_mistakes() {
        assert!(balanced("<svg><g></svg>").is_err());
        assert!(balanced("<svg><text>x</text>").is_err());
        assert_eq!(balanced("<svg><rect/><g><text>a</text></g></svg>"), Ok(4));
    }

    #[test]
    fn compact_numbers_and_nice_ceilings() {
        assert_eq!(compact(837.0), "837");
        assert_eq!(compact(15_015.0), "15.0k");
        assert_eq!(compact(1_000.0), "1k");
        assert_eq!(compact(1_234_567.0), "1.23M");
        assert_eq!(compact(250_000_000.0), "250M");
        assert_eq!(nice_ceiling(837.0), 1000.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        let log = Scale::Log {
            low: 10.0,
            high: 1000.0,
        };
        assert_eq!(log.ticks(), vec![10.0, 100.0, 1000.0]);
        assert!((log.fraction(100) - 0.5).abs() < 1e-9);
        assert_eq!(log.fraction(0), 0.0);
    }
}
