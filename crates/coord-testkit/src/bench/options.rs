//! A bench binary's command line: scenario names to run (all by default), and the length and
//! number of rounds, from `--secs=N` / `--rounds=N` or `COORD_BENCH_SECS` / `COORD_BENCH_ROUNDS`.

/// What to run, as parsed by [`Options::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The scenarios to run, in the order given (all of them when none is named).
    pub scenarios: Vec<&'static str>,
    /// The length of a round in seconds, if overridden.
    pub secs: Option<f64>,
    /// The number of rounds, if overridden.
    pub rounds: Option<usize>,
}

impl Options {
    /// Parses the process's arguments and environment against the bench's `scenarios`.
    ///
    /// # Errors
    ///
    /// A message naming an unknown scenario, a value that is not a number, or a non-positive
    /// round length or count.
    ///
    /// ```
    /// let options = coord_testkit::bench::options::Options::parse(&["fast", "slow"]).unwrap();
    /// assert!(!options.scenarios.is_empty());
    /// ```
    pub fn parse(scenarios: &[&'static str]) -> Result<Options, String> {
        Options::from_args(
            scenarios,
            std::env::args().skip(1),
            env_number("COORD_BENCH_SECS")?,
            env_number("COORD_BENCH_ROUNDS")?,
        )
    }

    fn from_args(
        scenarios: &[&'static str],
        args: impl IntoIterator<Item = String>,
        secs: Option<f64>,
        rounds: Option<usize>,
    ) -> Result<Options, String> {
        let mut options = Options {
            scenarios: Vec::new(),
            secs,
            rounds,
        };
        for arg in args {
            if let Some(secs) = arg.strip_prefix("--secs=") {
                options.secs = Some(number("--secs", secs)?);
            } else if let Some(rounds) = arg.strip_prefix("--rounds=") {
                options.rounds = Some(number("--rounds", rounds)?);
            } else if arg.starts_with('-') {
                // `cargo bench` passes `--bench`; libtest flags mean nothing here.
            } else if let Some(name) = scenarios.iter().find(|s| **s == arg) {
                options.scenarios.push(name);
            } else {
                return Err(format!(
                    "unknown scenario {arg:?}; choose from {}",
                    scenarios.join(", ")
                ));
            }
        }
        if options.scenarios.is_empty() {
            options.scenarios = scenarios.to_vec();
        }
        if options.secs.is_some_and(|s| s.is_nan() || s <= 0.0) || options.rounds == Some(0) {
            return Err("rounds and their length must be positive".to_owned());
        }
        Ok(options)
    }
}

fn env_number<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => number(name, value.trim()).map(Some),
        _ => Ok(None),
    }
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{name}={value:?} is not a number"))
}

/// The CPU model from `/proc/cpuinfo`, for the report's header.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn named_scenarios_and_overrides_are_parsed() {
        let options = Options::from_args(
            &["a", "b"],
            args(&["--bench", "b", "--secs=1.5", "--rounds=3"]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            options,
            Options {
                scenarios: vec!["b"],
                secs: Some(1.5),
                rounds: Some(3)
            }
        );
    }

    #[test]
    fn no_scenario_means_all_and_bad_input_is_an_error() {
        assert_eq!(
            Options::from_args(&["a", "b"], args(&[]), None, None)
                .unwrap()
                .scenarios,
            ["a", "b"]
        );
        assert!(Options::from_args(&["a"], args(&["c"]), None, None).is_err());
        assert!(Options::from_args(&["a"], args(&["--rounds=0"]), None, None).is_err());
        assert!(Options::from_args(&["a"], args(&["--secs=x"]), None, None).is_err());
    }
}
