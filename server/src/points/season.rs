//! Seasons: the operator divides time into seasons (`[[points.seasons]]` in the config, each
//! with a name and a UTC start date). Balances are kept for all time; the portal shows the
//! current season's too, and a slash takes a share of the points earned in the current season.
//!
//! With no seasons configured there is one, `all time`, that began at the epoch, so every
//! rule that speaks of "the current season" still has a meaning.

use chrono::{NaiveDate, NaiveTime};
use serde::{Deserialize, Serialize};

/// One configured season: it runs from `starts` (00:00 UTC) until the next one starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Season {
    /// Shown in the portal, e.g. `Season 2`.
    pub name: String,
    /// The UTC date it starts, `YYYY-MM-DD` (a quoted string in TOML).
    #[schema(value_type = String, format = Date)]
    pub starts: NaiveDate,
}

/// A season as a time window, for queries and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SeasonWindow {
    pub name: String,
    /// Start, inclusive, in ms since the epoch.
    pub starts_ms: i64,
    /// End, exclusive; absent for the last season configured.
    pub ends_ms: Option<i64>,
}

/// The name of the one season there is when none are configured.
pub const ALL_TIME: &str = "all time";

fn start_ms(date: NaiveDate) -> i64 {
    date.and_time(NaiveTime::MIN).and_utc().timestamp_millis()
}

/// Checks a season list: names non-empty and distinct, start dates strictly rising.
pub fn validate(seasons: &[Season]) -> Result<(), String> {
    for (i, season) in seasons.iter().enumerate() {
        if season.name.trim().is_empty() || season.name.len() > 64 {
            return Err(format!(
                "points.seasons[{i}]: a season needs a name of 1-64 characters"
            ));
        }
        if seasons[..i].iter().any(|s| s.name == season.name) {
            return Err(format!(
                "points.seasons: the name `{}` is used twice",
                season.name
            ));
        }
    }
    if let Some(pair) = seasons.windows(2).find(|p| p[1].starts <= p[0].starts) {
        return Err(format!(
            "points.seasons: `{}` starts {} but must start after `{}` ({}); list seasons in order",
            pair[1].name, pair[1].starts, pair[0].name, pair[0].starts
        ));
    }
    Ok(())
}

/// The season in force at `now_ms`. Before the first configured season starts, time up to
/// it counts as one unnamed season (`before <first name>`).
pub fn season_at(seasons: &[Season], now_ms: i64) -> SeasonWindow {
    let Some(first) = seasons.first() else {
        return SeasonWindow {
            name: ALL_TIME.to_owned(),
            starts_ms: 0,
            ends_ms: None,
        };
    };
    let current = seasons.iter().rposition(|s| start_ms(s.starts) <= now_ms);
    match current {
        None => SeasonWindow {
            name: format!("before {}", first.name),
            starts_ms: 0,
            ends_ms: Some(start_ms(first.starts)),
        },
        Some(i) => SeasonWindow {
            name: seasons[i].name.clone(),
            starts_ms: start_ms(seasons[i].starts),
            ends_ms: seasons.get(i + 1).map(|next| start_ms(next.starts)),
        },
    }
}

/// Every configured season as a window, oldest first (the rules page lists them).
pub fn windows(seasons: &[Season]) -> Vec<SeasonWindow> {
    seasons
        .iter()
        .enumerate()
        .map(|(i, s)| SeasonWindow {
            name: s.name.clone(),
            starts_ms: start_ms(s.starts),
            ends_ms: seasons.get(i + 1).map(|next| start_ms(next.starts)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn season(name: &str, starts: &str) -> Season {
        Season {
            name: name.to_owned(),
            starts: starts.parse().expect("a date"),
        }
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn the_current_season_is_the_last_one_started() {
        let seasons = [season("S1", "2026-01-01"), season("S2", "2026-07-01")];
        let s1 = start_ms(seasons[0].starts);
        let s2 = start_ms(seasons[1].starts);
        assert_eq!(s1, 1_767_225_600_000, "2026-01-01T00:00:00Z");

        let before = season_at(&seasons, s1 - 1);
        assert_eq!(before.name, "before S1");
        assert_eq!((before.starts_ms, before.ends_ms), (0, Some(s1)));

        let first = season_at(&seasons, s1);
        assert_eq!(first.name, "S1");
        assert_eq!((first.starts_ms, first.ends_ms), (s1, Some(s2)));

        let last = season_at(&seasons, s2 + 100 * DAY);
        assert_eq!(last.name, "S2");
        assert_eq!((last.starts_ms, last.ends_ms), (s2, None));

        assert_eq!(windows(&seasons), vec![first, last]);
    }

    #[test]
    fn without_seasons_all_time_is_one_season() {
        let all = season_at(&[], 1_800_000_000_000);
        assert_eq!(all.name, ALL_TIME);
        assert_eq!((all.starts_ms, all.ends_ms), (0, None));
        assert!(windows(&[]).is_empty());
    }

    #[test]
    fn bad_season_lists_are_named() {
        let unordered = [season("S2", "2026-07-01"), season("S1", "2026-01-01")];
        let err = validate(&unordered).expect_err("out of order");
        assert!(err.contains("list seasons in order"), "{err}");

        let same_day = [season("S1", "2026-01-01"), season("S2", "2026-01-01")];
        assert!(validate(&same_day).is_err());

        let twice = [season("S1", "2026-01-01"), season("S1", "2026-07-01")];
        assert!(validate(&twice).expect_err("dup").contains("used twice"));

        let blank = [season(" ", "2026-01-01")];
        assert!(validate(&blank).expect_err("blank").contains("name"));

        assert!(validate(&[season("S1", "2026-01-01"), season("S2", "2026-07-01")]).is_ok());
    }
}
