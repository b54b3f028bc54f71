//! Flag defaults read from a config's `Default`, so each default is written once: in the config.

use std::time::Duration;

/// A duration as a flag's default, in the form its parser (`humantime`) reads and `--help` shows: "10s",
/// "2ms", "1day". For `#[arg(default_value = defaults::duration(Config::default().timeout))]`.
pub fn duration(value: Duration) -> String {
    humantime::format_duration(value).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations_round_trip_through_the_flag_parser() {
        for value in [Duration::from_millis(2), Duration::from_secs(10), Duration::from_secs(86_400)] {
            assert_eq!(humantime::parse_duration(&super::duration(value)), Ok(value));
        }
    }
}
