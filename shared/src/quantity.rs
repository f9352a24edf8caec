//! Kubernetes resource quantities (`250m`, `1.5`, `128Mi`, `1e3`) as exact integers.
//!
//! A quantity is held in nano-units, so CPU converts to millicores and memory to bytes
//! without floating point, rounding up the way Kubernetes does.

use std::fmt;
use std::str::FromStr;

const NANO: i128 = 1_000_000_000;

/// A parsed quantity, in nano-units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity {
    nanos: i128,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {input:?} ({reason})"
)]
pub struct QuantityError {
    input: String,
    reason: &'static str,
}

impl Quantity {
    /// A quantity of `n` whole units.
    pub fn from_units(n: i64) -> Self {
        Quantity {
            nanos: i128::from(n) * NANO,
        }
    }

    /// A quantity of `n` thousandths of a unit (millicores for CPU).
    pub fn from_millis(n: i64) -> Self {
        Quantity {
            nanos: i128::from(n) * 1_000_000,
        }
    }

    /// The value in thousandths, rounded up (CPU millicores).
    pub fn millis(&self) -> i64 {
        saturate(div_ceil(self.nanos, 1_000_000))
    }

    /// The value in whole units, rounded up (bytes for memory and storage).
    pub fn units(&self) -> i64 {
        saturate(div_ceil(self.nanos, NANO))
    }

    /// Parses a quantity in Kubernetes syntax.
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        let fail = |reason| QuantityError {
            input: input.to_owned(),
            reason,
        };
        let (negative, rest) = match input.as_bytes().first() {
            Some(b'-') => (true, &input[1..]),
            Some(b'+') => (false, &input[1..]),
            Some(_) => (false, input),
            None => return Err(fail("empty")),
        };
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(fail("no number"));
        }
        if fraction.len() > 9 {
            return Err(fail("more than nine decimal places"));
        }
        let digits = format!("{whole}{fraction:0<9}");
        let mut nanos: i128 = digits.parse().map_err(|_| fail("number too large"))?;
        nanos = match suffix {
            "" => Some(nanos),
            "n" => Some(nanos / NANO),
            "u" => Some(nanos / 1_000_000),
            "m" => Some(nanos / 1_000),
            "k" => nanos.checked_mul(1_000),
            "M" => nanos.checked_mul(1_000_000),
            "G" => nanos.checked_mul(1_000_000_000),
            "T" => nanos.checked_mul(1_000_000_000_000),
            "P" => nanos.checked_mul(1_000_000_000_000_000),
            "E" => nanos.checked_mul(1_000_000_000_000_000_000),
            "Ki" => nanos.checked_mul(1 << 10),
            "Mi" => nanos.checked_mul(1 << 20),
            "Gi" => nanos.checked_mul(1 << 30),
            "Ti" => nanos.checked_mul(1 << 40),
            "Pi" => nanos.checked_mul(1 << 50),
            "Ei" => nanos.checked_mul(1 << 60),
            exp if exp.starts_with(['e', 'E']) => {
                let power: i32 = exp[1..].parse().map_err(|_| fail("bad exponent"))?;
                if !(-9..=18).contains(&power) {
                    return Err(fail("exponent out of range"));
                }
                if power >= 0 {
                    nanos.checked_mul(10_i128.pow(power.unsigned_abs()))
                } else {
                    Some(nanos / 10_i128.pow(power.unsigned_abs()))
                }
            }
            _ => return Err(fail("unknown suffix")),
        }
        .ok_or_else(|| fail("number too large"))?;
        Ok(Quantity {
            nanos: if negative { -nanos } else { nanos },
        })
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl fmt::Display for Quantity {
    /// Canonical-enough form: whole units when exact, else millis, else nanos.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % NANO == 0 {
            write!(f, "{}", self.nanos / NANO)
        } else if self.nanos % 1_000_000 == 0 {
            write!(f, "{}m", self.nanos / 1_000_000)
        } else {
            write!(f, "{}n", self.nanos)
        }
    }
}

impl std::ops::Add for Quantity {
    type Output = Quantity;
    fn add(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }
}

impl std::ops::Sub for Quantity {
    type Output = Quantity;
    fn sub(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_sub(other.nanos),
        }
    }
}

fn div_ceil(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d > 0 { q + 1 } else { q }
}

fn saturate(n: i128) -> i64 {
    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn cpu_quantities_become_millicores() {
        assert_eq!(q("250m").millis(), 250);
        assert_eq!(q("1").millis(), 1000);
        assert_eq!(q("1.5").millis(), 1500);
        assert_eq!(q("0.1").millis(), 100);
        assert_eq!(q(".5").millis(), 500);
        assert_eq!(q("100u").millis(), 1, "rounded up like Kubernetes");
        assert_eq!(q("2e-3").millis(), 2);
    }

    #[test]
    fn memory_quantities_become_bytes() {
        assert_eq!(q("128Mi").units(), 128 << 20);
        assert_eq!(q("1Gi").units(), 1 << 30);
        assert_eq!(q("1G").units(), 1_000_000_000);
        assert_eq!(q("1.5Ki").units(), 1536);
        assert_eq!(q("1e3").units(), 1000);
        assert_eq!(q("1E3").units(), 1000);
        assert_eq!(q("8Ei").units(), i64::MAX, "saturates instead of wrapping");
        assert_eq!(q("500m").units(), 1, "half a byte rounds up");
    }

    #[test]
    fn signs_and_arithmetic() {
        assert_eq!(q("-1").millis(), -1000);
        assert_eq!(q("+2").units(), 2);
        assert_eq!((q("1") - q("250m")).millis(), 750);
        assert_eq!((q("1Gi") + q("1Gi")).units(), 2 << 30);
        assert_eq!(Quantity::from_millis(1500), q("1.5"));
        assert_eq!(Quantity::from_units(3), q("3"));
    }

    #[test]
    fn display_is_parseable() {
        for s in ["3", "250m", "1500m", "5n"] {
            assert_eq!(q(s).to_string(), s);
            assert_eq!(q(&q(s).to_string()), q(s));
        }
    }

    #[test]
    fn malformed_quantities_are_refused_with_the_reason() {
        for (input, reason) in [
            ("", "empty"),
            ("Mi", "no number"),
            ("1.2.3", "no number"),
            ("12x", "unknown suffix"),
            ("1Mii", "unknown suffix"),
            ("1e", "bad exponent"),
            ("1e40", "exponent out of range"),
            ("0.0000000001", "more than nine decimal places"),
        ] {
            let err = Quantity::parse(input).unwrap_err();
            assert_eq!(err.reason, reason, "{input:?}");
            assert!(err.to_string().contains(&format!("{input:?}")));
        }
    }
}
