//! The exit-code contract of `lgaf-coordinator` and `lgaf-worker`: what a process's status
//! tells whoever restarts it (Kubernetes' `podFailurePolicy`, a shell loop, systemd) about
//! whether starting it again can help. The Helm chart's worker Job fails at once on the
//! codes of [`ExitClass::ends_job`] and retries the others; the README documents the table.
//!
//! | code    | class                  | restart?                                          |
//! |---------|------------------------|---------------------------------------------------|
//! | 0       | [`ExitClass::Success`] | no: the job finished (or this process's part)     |
//! | 2       | [`ExitClass::Usage`]   | no: a flag or its value is wrong (clap's code)    |
//! | 75      | [`ExitClass::Retryable`] | yes: lost coordinator or peer, network, storage |
//! | 78      | [`ExitClass::Permanent`] | no: bad configuration or data, refused token    |
//! | 79      | [`ExitClass::JobFailed`] | no: the job as a whole failed                   |
//! | 128 + n | killed by signal n     | yes (Kubernetes counts it against the retries)    |
//!
//! 75 and 78 are `EX_TEMPFAIL` and `EX_CONFIG` of BSD's `sysexits.h`; 79 is the first code
//! after them.

use std::process::ExitCode;

/// Why a process ended, as far as restarting it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitClass {
    /// The job finished (for a worker: also when it finished without this worker).
    Success,
    /// The command line is wrong; clap prints the usage and exits with this code.
    Usage,
    /// Starting again may succeed: the coordinator or a peer was lost, the network or the
    /// store failed, a port was taken.
    Retryable,
    /// Starting again the same way will fail the same way: the configuration, the data, a
    /// file it names, or the job token is wrong.
    Permanent,
    /// The job failed as a whole (its coordinator gave up on it): no process of it should
    /// be started again.
    JobFailed,
}

impl ExitClass {
    /// The process's exit status for this class.
    pub const fn code(self) -> u8 {
        match self {
            ExitClass::Success => 0,
            ExitClass::Usage => 2,
            ExitClass::Retryable => 75,
            ExitClass::Permanent => 78,
            ExitClass::JobFailed => 79,
        }
    }

    /// The class an exit status stands for (`None`: a status outside the contract, such as
    /// 128 + a signal's number, or a crash's 1 or 101).
    pub const fn from_code(code: i32) -> Option<ExitClass> {
        match code {
            0 => Some(ExitClass::Success),
            2 => Some(ExitClass::Usage),
            75 => Some(ExitClass::Retryable),
            78 => Some(ExitClass::Permanent),
            79 => Some(ExitClass::JobFailed),
            _ => None,
        }
    }

    /// Whether a process that exited so ends its job (no restart of any of its processes
    /// can help): the chart's `podFailurePolicy` fails the Job on these codes.
    pub const fn ends_job(self) -> bool {
        matches!(
            self,
            ExitClass::Usage | ExitClass::Permanent | ExitClass::JobFailed
        )
    }
}

impl From<ExitClass> for ExitCode {
    fn from(class: ExitClass) -> ExitCode {
        ExitCode::from(class.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ExitClass; 5] = [
        ExitClass::Success,
        ExitClass::Usage,
        ExitClass::Retryable,
        ExitClass::Permanent,
        ExitClass::JobFailed,
    ];

    #[test]
    fn codes_are_the_documented_ones_and_read_back() {
        let codes: Vec<u8> = ALL.iter().map(|c| c.code()).collect();
        assert_eq!(codes, [0, 2, 75, 78, 79]);
        for class in ALL {
            assert_eq!(ExitClass::from_code(i32::from(class.code())), Some(class));
        }
        for outside in [1, 101, 137, 143, -1] {
            assert_eq!(ExitClass::from_code(outside), None);
        }
    }

    #[test]
    fn only_usage_permanent_and_job_failures_end_the_job() {
        let ending: Vec<u8> = ALL
            .iter()
            .filter(|c| c.ends_job())
            .map(|c| c.code())
            .collect();
        // The chart's podFailurePolicy lists exactly these.
        assert_eq!(ending, [2, 78, 79]);
    }
}
