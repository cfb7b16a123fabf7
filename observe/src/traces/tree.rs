//! One trace as a tree of text: parents above children, links under the
//! span that holds them, each span with its service and duration.
//!
//! A [`TraceView`] is what `mlstack trace show` prints. It is built from the
//! store directly ([`TraceView::load`]) or fetched as JSON from a running
//! receiver's query port; both give the same view, with each link's target
//! looked up (its name and service) when the store holds it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::store::{SpanStore, StoredSpan, hex, parse_trace_id};
use crate::Error;

/// A span link as shown: the target's ids, and its name and service when
/// the store holds the target span.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    pub trace_id: String,
    pub span_id: String,
    pub name: Option<String>,
    pub service: Option<String>,
}

/// One span as shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanView {
    pub service: String,
    pub instance_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    pub name: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: BTreeMap<String, String>,
    pub links: Vec<LinkView>,
    /// `unset`, `ok` or `error`.
    pub status: String,
    pub status_message: String,
}

impl SpanView {
    pub fn duration_ms(&self) -> f64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns) as f64 / 1e6
    }
}

/// One trace as shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceView {
    pub trace_id: String,
    /// In start order.
    pub spans: Vec<SpanView>,
}

/// A span's name and service.
type NameService = (String, String);

/// Nesting deeper than this is cut with one line (a client can send a chain
/// of any length; the renderer recurses once per level).
const MAX_DEPTH: usize = 64;

/// Client-sent text made safe for a terminal: control characters (newlines,
/// escape sequences) written as escapes, so they cannot break the tree or
/// drive the terminal.
fn clean(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_string()
    }
}

/// Attributes `tracing-opentelemetry` adds to every span (source location,
/// thread, log target): noise in a tree meant to show what happened.
fn shown(key: &str) -> bool {
    !(key.starts_with("code.") || key.starts_with("thread.") || key == "target" || key == "level")
}

impl TraceView {
    fn from_spans(trace_id: &str, spans: Vec<StoredSpan>, store: &SpanStore) -> Self {
        // (trace id, span id) of a link target → its (name, service), if stored.
        let mut cache: HashMap<(Vec<u8>, Vec<u8>), Option<NameService>> = HashMap::new();
        let local: HashMap<Vec<u8>, NameService> = spans
            .iter()
            .map(|s| {
                (
                    s.span.span_id.clone(),
                    (s.span.name.clone(), s.service_name.clone()),
                )
            })
            .collect();
        let mut views: Vec<SpanView> = spans
            .iter()
            .map(|s| {
                let links = s
                    .span
                    .links
                    .iter()
                    .map(|l| {
                        let target = if l.trace_id == s.span.trace_id {
                            local.get(&l.span_id).cloned()
                        } else {
                            cache
                                .entry((l.trace_id.clone(), l.span_id.clone()))
                                .or_insert_with(|| {
                                    store
                                        .span(&l.trace_id, &l.span_id)
                                        .ok()
                                        .flatten()
                                        .map(|t| (t.span.name, t.service_name))
                                })
                                .clone()
                        };
                        LinkView {
                            trace_id: hex(&l.trace_id),
                            span_id: hex(&l.span_id),
                            name: target.as_ref().map(|t| t.0.clone()),
                            service: target.map(|t| t.1),
                        }
                    })
                    .collect();
                let status = s.span.status.as_ref();
                SpanView {
                    service: s.service_name.clone(),
                    instance_id: s.instance_id.clone(),
                    span_id: s.span_id_hex(),
                    parent_span_id: s.parent_span_id_hex(),
                    name: s.span.name.clone(),
                    start_unix_ns: s.span.start_time_unix_nano,
                    end_unix_ns: s.span.end_time_unix_nano,
                    attributes: s
                        .span
                        .attributes
                        .iter()
                        .filter(|kv| shown(&kv.key))
                        .filter_map(|kv| {
                            Some((
                                kv.key.clone(),
                                super::store::any_value_text(kv.value.as_ref()?)?,
                            ))
                        })
                        .collect(),
                    links,
                    status: match status.map(|st| st.code) {
                        Some(1) => "ok",
                        Some(2) => "error",
                        _ => "unset",
                    }
                    .into(),
                    status_message: status.map(|st| st.message.clone()).unwrap_or_default(),
                }
            })
            .collect();
        views.sort_by(|a, b| (a.start_unix_ns, &a.span_id).cmp(&(b.start_unix_ns, &b.span_id)));
        TraceView {
            trace_id: trace_id.to_string(),
            spans: views,
        }
    }

    /// The trace from the store; `Error::TraceNotFound` when it holds no span of it.
    pub fn load(store: &SpanStore, trace_id: &str) -> Result<Self, Error> {
        let t = parse_trace_id(trace_id)?;
        let spans = store.trace(&t)?;
        if spans.is_empty() {
            return Err(Error::TraceNotFound {
                trace_id: t,
                source_: store.dir().display().to_string(),
            });
        }
        Ok(Self::from_spans(&t, spans, store))
    }

    /// The span named `name` (the first by start), if any.
    pub fn find(&self, name: &str) -> Option<&SpanView> {
        self.spans.iter().find(|s| s.name == name)
    }

    /// Every span named `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a SpanView> + 'a {
        self.spans.iter().filter(move |s| s.name == name)
    }

    /// The span with id `span_id`, if in this trace.
    pub fn get(&self, span_id: &str) -> Option<&SpanView> {
        self.spans.iter().find(|s| s.span_id == span_id)
    }

    /// The tree as text. Past `fold` siblings of one name, the rest are
    /// summarised in one line (count, median and longest duration); past
    /// `fold` links on a span, the rest are counted. `fold = usize::MAX`
    /// prints everything.
    pub fn render(&self, fold: usize) -> String {
        let ids: std::collections::HashSet<&str> =
            self.spans.iter().map(|s| s.span_id.as_str()).collect();
        let mut children: HashMap<&str, Vec<&SpanView>> = HashMap::new();
        let mut roots = Vec::new();
        for s in &self.spans {
            if s.parent_span_id.is_empty() || !ids.contains(s.parent_span_id.as_str()) {
                roots.push(s);
            } else {
                children
                    .entry(s.parent_span_id.as_str())
                    .or_default()
                    .push(s);
            }
        }
        let start = self
            .spans
            .iter()
            .map(|s| s.start_unix_ns)
            .min()
            .unwrap_or(0);
        let end = self.spans.iter().map(|s| s.end_unix_ns).max().unwrap_or(0);
        let mut services: Vec<&str> = self.spans.iter().map(|s| s.service.as_str()).collect();
        services.sort_unstable();
        services.dedup();
        let n_links: usize = self.spans.iter().map(|s| s.links.len()).sum();
        let mut out = format!(
            "trace {}: {} spans, {} links, services {}, {:.1} ms\n",
            self.trace_id,
            self.spans.len(),
            n_links,
            services.join(", "),
            end.saturating_sub(start) as f64 / 1e6
        );
        let mut r = Renderer {
            out: &mut out,
            children: &children,
            trace_id: &self.trace_id,
            fold,
            seen: std::collections::HashSet::new(),
        };
        for root in &roots {
            r.span(root, "", "", true, 0);
        }
        // Spans no root reaches: their parents form a cycle (a span that is
        // its own ancestor). Shown, not silently dropped.
        let unreached: Vec<&SpanView> = self
            .spans
            .iter()
            .filter(|s| !r.seen.contains(s.span_id.as_str()))
            .collect();
        for s in unreached {
            if !r.seen.contains(s.span_id.as_str()) {
                let _ = writeln!(r.out, "(in a parent cycle:)");
                r.span(s, "", "", true, 0);
            }
        }
        out
    }
}

struct Renderer<'a> {
    out: &'a mut String,
    children: &'a HashMap<&'a str, Vec<&'a SpanView>>,
    trace_id: &'a str,
    fold: usize,
    /// Spans printed (or folded) so far: each once, whatever the parents say.
    seen: std::collections::HashSet<&'a str>,
}

impl<'a> Renderer<'a> {
    fn span(&mut self, s: &'a SpanView, lead: &str, branch: &str, root: bool, depth: usize) {
        if !self.seen.insert(s.span_id.as_str()) {
            return;
        }
        let attrs: Vec<String> = s
            .attributes
            .iter()
            .map(|(k, v)| format!("{}={}", clean(k), clean(v)))
            .collect();
        let mut line = attrs.join(" ");
        if line.chars().count() > 140 {
            line = line.chars().take(140).collect::<String>() + "…";
        }
        let orphan = if root && !s.parent_span_id.is_empty() {
            format!(" (parent {} not received)", s.parent_span_id)
        } else {
            String::new()
        };
        let status = match s.status.as_str() {
            "error" => format!(" ERROR {}", clean(&s.status_message)),
            _ => String::new(),
        };
        let _ = writeln!(
            self.out,
            "{lead}{branch}{} [{}] {:.1} ms span {}{orphan}{status}{}{line}",
            clean(&s.name),
            clean(&s.service),
            s.duration_ms(),
            s.span_id,
            if line.is_empty() { "" } else { "  " },
        );
        let inner = format!(
            "{lead}{}",
            match branch {
                "" => "",
                "└─ " => "   ",
                _ => "│  ",
            }
        );
        let kids = self
            .children
            .get(s.span_id.as_str())
            .cloned()
            .unwrap_or_default();
        if depth >= MAX_DEPTH && !kids.is_empty() {
            let _ = writeln!(
                self.out,
                "{inner}└─ … {} child spans below depth {MAX_DEPTH} not shown",
                kids.len()
            );
            self.seen.extend(kids.iter().map(|k| k.span_id.as_str()));
            return;
        }
        let link_lead = format!("{inner}{}", if kids.is_empty() { "   " } else { "│  " });
        for (i, l) in s.links.iter().enumerate() {
            if i == self.fold {
                let _ = writeln!(
                    self.out,
                    "{link_lead}↳ … {} more links",
                    s.links.len() - self.fold
                );
                break;
            }
            let what = match (&l.name, &l.service) {
                (Some(n), Some(sv)) => format!("{} [{}]", clean(n), clean(sv)),
                _ => "(span not received)".into(),
            };
            let trace = if l.trace_id == self.trace_id {
                "this trace".to_string()
            } else {
                format!("trace {}", l.trace_id)
            };
            let _ = writeln!(
                self.out,
                "{link_lead}↳ link to {what} span {} in {trace}",
                l.span_id
            );
        }
        // Fold runs of same-named siblings past `fold`.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut folded: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let visible: Vec<&SpanView> = kids
            .iter()
            .copied()
            .filter(|k| {
                let n = seen.entry(k.name.as_str()).or_default();
                *n += 1;
                if *n > self.fold {
                    folded
                        .entry(k.name.as_str())
                        .or_default()
                        .push(k.duration_ms());
                    self.seen.insert(k.span_id.as_str());
                    false
                } else {
                    true
                }
            })
            .collect();
        let total = visible.len() + folded.len();
        for (i, k) in visible.iter().enumerate() {
            let last = i + 1 == total;
            self.span(
                k,
                &inner,
                if last { "└─ " } else { "├─ " },
                false,
                depth + 1,
            );
        }
        for (j, (name, mut d)) in folded.into_iter().enumerate() {
            let last = visible.len() + j + 1 == total;
            d.sort_by(f64::total_cmp);
            let _ = writeln!(
                self.out,
                "{inner}{}… {} more {} spans (median {:.1} ms, longest {:.1} ms; their children not shown)",
                if last { "└─ " } else { "├─ " },
                d.len(),
                clean(name),
                d[d.len() / 2],
                d[d.len() - 1]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, parent: &str, name: &str, start: u64) -> SpanView {
        SpanView {
            service: "svc".into(),
            instance_id: "i".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: name.into(),
            start_unix_ns: start,
            end_unix_ns: start + 2_000_000,
            attributes: BTreeMap::new(),
            links: vec![],
            status: "unset".into(),
            status_message: String::new(),
        }
    }

    #[test]
    fn renders_parents_links_orphans_and_folds_siblings() {
        let mut commit = view("c", "r", "commit", 3);
        commit.links.push(LinkView {
            trace_id: "t".into(),
            span_id: "p1".into(),
            name: Some("record".into()),
            service: Some("svc".into()),
        });
        let mut spans = vec![
            view("r", "", "root", 0),
            commit,
            view("o", "zz", "orphan", 9),
        ];
        for i in 0..5 {
            spans.push(view(&format!("p{i}"), "r", "record", 1 + i));
        }
        let v = TraceView {
            trace_id: "t".into(),
            spans,
        };
        let text = v.render(2);
        assert!(text.starts_with("trace t: 8 spans, 1 links"), "{text}");
        assert!(text.contains("├─ record [svc]"), "{text}");
        assert!(text.contains("… 3 more record spans"), "{text}");
        assert!(
            text.contains("↳ link to record [svc] span p1 in this trace"),
            "{text}"
        );
        assert!(
            text.contains("orphan [svc] 2.0 ms span o (parent zz not received)"),
            "{text}"
        );
        // Everything when unfolded.
        assert_eq!(
            v.render(usize::MAX).matches("record [svc] 2.0 ms").count(),
            5
        );
    }

    #[test]
    fn cycles_deep_chains_and_control_characters_are_shown_safely() {
        // a → b → a: neither is a root; both still printed, once.
        let mut spans = vec![view("a", "b", "cyc-a", 0), view("b", "a", "cyc-b", 1)];
        // A chain deeper than the limit.
        spans.push(view("c0", "", "chain", 2));
        for i in 1..200 {
            spans.push(view(
                &format!("c{i}"),
                &format!("c{}", i - 1),
                "chain",
                2 + i,
            ));
        }
        spans.push(view("x", "", "evil\n\u{1b}[2Jname", 500));
        let text = TraceView {
            trace_id: "t".into(),
            spans,
        }
        .render(usize::MAX);
        assert!(text.contains("(in a parent cycle:)"), "{text}");
        assert_eq!(text.matches("cyc-a [svc]").count(), 1, "{text}");
        assert_eq!(text.matches("cyc-b [svc]").count(), 1, "{text}");
        assert!(
            text.contains("child spans below depth 64 not shown"),
            "{text}"
        );
        assert!(text.contains("evil\\n\\u{1b}[2Jname"), "{text}");
        assert!(!text.contains('\u{1b}'), "an escape reached the output");
    }
}
