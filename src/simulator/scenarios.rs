//! Per-request scenarios, picked by `[sim:...]` markers in `input.prompt`.
//! The table of markers is in the simulator's module documentation
//! (`SCENARIOS.md`, the one copy).

/// How many recordInfo reads a `[sim:poll-*]` task answers with its fault.
pub const POLL_FAULT_READS: u32 = 2;

/// How a task ends when nobody intervenes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    #[default]
    Success,
    Fail,
    /// Stays `generating` forever.
    Never,
    /// Stays `generating` until completed through the control API.
    Manual,
}

/// What happens to the end-of-task callback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CallbackMode {
    #[default]
    Once,
    Duplicate,
    Lost,
}

/// What goes wrong with a createTask answer after the task is made: the
/// faults that leave a caller not knowing whether it paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateFault {
    /// The answer comes after `SimulatorConfig::slow_create`.
    Slow,
    /// The connection is closed with no answer at all.
    Drop,
}

/// Everything the markers of one prompt ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scenario {
    /// createTask answers this kie.ai code instead of creating a task.
    pub reject: Option<u16>,
    pub outcome: Outcome,
    /// Timings ×10.
    pub slow: bool,
    /// The first `POLL_FAULT_READS` recordInfo reads answer this code.
    pub poll_fault: Option<u16>,
    pub callback: CallbackMode,
    pub create_fault: Option<CreateFault>,
}

impl Scenario {
    /// Reads every `[sim:...]` marker of a prompt.
    pub fn parse(prompt: &str) -> Result<Self, String> {
        let mut scenario = Self::default();
        let mut rest = prompt;
        while let Some(start) = rest.find("[sim:") {
            let after = &rest[start + "[sim:".len()..];
            let Some(end) = after.find(']') else {
                return Err("input.prompt has an unterminated [sim:...] marker".to_owned());
            };
            let name = &after[..end];
            match name {
                "401" | "402" | "422" | "429" | "455" | "500" | "501" | "505" => {
                    scenario.reject = name.parse().ok();
                }
                "fail" => scenario.outcome = Outcome::Fail,
                "never" => scenario.outcome = Outcome::Never,
                "manual" => scenario.outcome = Outcome::Manual,
                "slow" => scenario.slow = true,
                "poll-500" => scenario.poll_fault = Some(500),
                "poll-429" => scenario.poll_fault = Some(429),
                "callback-dup" => scenario.callback = CallbackMode::Duplicate,
                "callback-lost" => scenario.callback = CallbackMode::Lost,
                "slow-create" => scenario.create_fault = Some(CreateFault::Slow),
                "drop-create" => scenario.create_fault = Some(CreateFault::Drop),
                other => {
                    return Err(format!(
                        "input.prompt has an unknown simulator marker [sim:{other}]"
                    ));
                }
            }
            rest = &after[end + 1..];
        }
        Ok(scenario)
    }
}

/// The `msg` kie.ai sends with each code (wording modelled on live answers).
pub fn message_for(code: u16) -> &'static str {
    match code {
        401 => "You do not have access permissions",
        402 => "The current credits are insufficient. Please top up.",
        404 => "Not Found",
        422 => "Validation failed: the request parameters are invalid",
        429 => "The request frequency is too high. Please try again later.",
        455 => "The service is under maintenance. Please try again later.",
        500 => "Server internal error, please try again in a few minutes",
        501 => "Generation failed",
        505 => "This feature is currently disabled",
        _ => "Unknown error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_prompt_is_the_happy_path() {
        assert_eq!(Scenario::parse("a cat surfing"), Ok(Scenario::default()));
    }

    #[test]
    fn markers_combine() {
        let scenario = Scenario::parse("cat [sim:slow] dog [sim:fail][sim:poll-429]");
        assert_eq!(
            scenario,
            Ok(Scenario {
                reject: None,
                outcome: Outcome::Fail,
                slow: true,
                poll_fault: Some(429),
                callback: CallbackMode::Once,
                create_fault: None,
            })
        );
        assert_eq!(
            Scenario::parse("[sim:drop-create]").map(|s| s.create_fault),
            Ok(Some(CreateFault::Drop))
        );
        assert_eq!(
            Scenario::parse("[sim:slow-create]").map(|s| s.create_fault),
            Ok(Some(CreateFault::Slow))
        );
        assert_eq!(
            Scenario::parse("[sim:505]").map(|s| s.reject),
            Ok(Some(505))
        );
    }

    #[test]
    fn unknown_or_broken_markers_are_rejected() {
        assert!(Scenario::parse("[sim:fial]").is_err());
        assert!(Scenario::parse("[sim:fail").is_err());
        assert!(Scenario::parse("[sim:418]").is_err());
    }
}
