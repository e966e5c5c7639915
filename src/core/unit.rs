//! Time units of a limit, with the window lengths envoyproxy/ratelimit uses
//! (a month is 30 days, a year 365), aligned to the Unix epoch.

use std::fmt;

/// The unit of a `requests_per_unit` limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    /// Every unit, shortest first.
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The window length in seconds.
    pub const fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// The window length in nanoseconds.
    pub const fn nanos(self) -> u64 {
        self.seconds() * 1_000_000_000
    }

    /// Parses a unit name, case-insensitively (`second`, `MINUTE`, ...).
    pub fn parse(name: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(name))
    }

    /// The lowercase name, as written in configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// The number Envoy's `RateLimitUnit` / `RateLimit.Unit` enums give it.
    pub const fn proto_number(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// The unit for an Envoy enum number; `None` for UNKNOWN (0) or an
    /// unknown number.
    pub fn from_proto_number(n: i32) -> Option<Unit> {
        Unit::ALL.into_iter().find(|u| u.proto_number() == n)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_case_insensitive_and_rejects_unknown() {
        assert_eq!(Unit::parse("SECOND"), Some(Unit::Second));
        assert_eq!(Unit::parse("Week"), Some(Unit::Week));
        assert_eq!(Unit::parse("fortnight"), None);
        assert_eq!(Unit::parse(""), None);
    }

    #[test]
    fn proto_numbers_round_trip() {
        for u in Unit::ALL {
            assert_eq!(Unit::from_proto_number(u.proto_number()), Some(u));
        }
        assert_eq!(Unit::from_proto_number(0), None);
        assert_eq!(Unit::from_proto_number(8), None);
    }
}
