//! `IntOrString` fields (`maxSurge: 25%`, `maxUnavailable: 1`) scaled against a total.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The value of `v` for `total`: an integer as is, a percentage of `total` rounded up
/// or down. A malformed percentage is an error naming it.
pub fn scaled(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid type: string is not a percentage: {s:?}"))?;
            let x = pct * i64::from(total);
            let v = if round_up {
                (x + 99).div_euclid(100)
            } else {
                x.div_euclid(100)
            };
            Ok(v as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_asked() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled(&p("25%"), 10, true), Ok(3));
        assert_eq!(scaled(&p("25%"), 10, false), Ok(2));
        assert_eq!(scaled(&p("100%"), 7, false), Ok(7));
        assert_eq!(scaled(&p("0%"), 7, true), Ok(0));
        assert_eq!(scaled(&IntOrString::Int(4), 10, true), Ok(4));
        assert!(scaled(&p("abc"), 10, true).unwrap_err().contains("\"abc\""));
    }
}
