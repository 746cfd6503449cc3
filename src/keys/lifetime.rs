//! A generated key's lifetime as written by whoever creates it:
//! `30d`, `12h`, `90m`, `45s` (a bare number is seconds). Read the same by
//! `flexgate keys create --expires` and `POST /api/keys` (`expiresIn`);
//! each caller words the refusal for its own surface.

/// Why a lifetime was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeError {
    /// It does not start with a number.
    NotANumber,
    /// The unit is not `d`, `h`, `m` or `s`.
    BadUnit,
    /// Zero: the key would be expired when made.
    Zero,
}

/// `30d`, `12h`, `90m`, `45s` (or `45`) → seconds.
pub fn parse(text: &str) -> Result<u64, LifetimeError> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| LifetimeError::NotANumber)?;
    let factor = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" | "" => 1,
        _ => return Err(LifetimeError::BadUnit),
    };
    if n == 0 {
        return Err(LifetimeError::Zero);
    }
    Ok(n.saturating_mul(factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_refusals() {
        assert_eq!(parse("30d"), Ok(30 * 86_400));
        assert_eq!(parse(" 12h "), Ok(12 * 3_600));
        assert_eq!(parse("90m"), Ok(5_400));
        assert_eq!(parse("45s"), Ok(45));
        assert_eq!(parse("45"), Ok(45));
        assert_eq!(parse("d"), Err(LifetimeError::NotANumber));
        assert_eq!(parse("3w"), Err(LifetimeError::BadUnit));
        assert_eq!(parse("0x"), Err(LifetimeError::BadUnit));
        assert_eq!(parse("0h"), Err(LifetimeError::Zero));
    }
}
