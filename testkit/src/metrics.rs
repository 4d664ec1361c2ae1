//! Reads Prometheus text (what `GET /metrics` serves).

/// The samples of metric `name` (every label set), skipping comments.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(move |l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// A counter or gauge summed over all its label sets (0 if absent).
pub fn sum(text: &str, name: &str) -> f64 {
    samples(text, name).sum()
}

/// The first sample of a metric (a gauge without labels); `None` if absent.
pub fn first(text: &str, name: &str) -> Option<f64> {
    samples(text, name).next()
}

#[cfg(test)]
mod tests {
    use super::{first, sum};

    const TEXT: &str = "# HELP rollcall_errors_total Errors.\n\
        # TYPE rollcall_errors_total counter\n\
        rollcall_errors_total{code=\"forbidden\"} 2\n\
        rollcall_errors_total{code=\"bad_request\"} 3\n\
        rollcall_errors_total_extra 100\n\
        rollcall_connections 7\n";

    #[test]
    fn label_sets_are_summed_and_prefixes_do_not_match() {
        assert!((sum(TEXT, "rollcall_errors_total") - 5.0).abs() < f64::EPSILON);
        assert_eq!(first(TEXT, "rollcall_connections"), Some(7.0));
        assert_eq!(first(TEXT, "rollcall_missing"), None);
        assert!(sum(TEXT, "rollcall_missing").abs() < f64::EPSILON);
    }
}
