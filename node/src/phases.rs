//! What each phase of one connect is doing: not started, running since a moment, or ended with
//! its [`PhaseReport`]. The connect's events carry the reports, in ladder order.

use core::time::Duration;

use p2pd_proto::Instant;

use crate::types::{Phase, PhaseOutcome, PhaseReport, SkipReason};

/// Every phase, in ladder order.
pub(crate) const PHASES: [Phase; 5] = [
    Phase::Resolve,
    Phase::Direct,
    Phase::Reverse,
    Phase::Punch,
    Phase::Relay,
];

/// One phase's state.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Not started (yet).
    Pending,
    /// Running since `started` after the connect call.
    Running { started: Duration },
    /// Over.
    Ended(PhaseReport),
}

/// The phases of one connect.
#[derive(Clone, Debug)]
pub(crate) struct Phases {
    /// When the connect was called.
    since: Instant,
    states: [(Phase, State); 5],
}

impl Phases {
    /// Every phase pending, for a connect called at `since`.
    pub(crate) fn new(since: Instant) -> Phases {
        Phases {
            since,
            states: PHASES.map(|p| (p, State::Pending)),
        }
    }

    fn state_mut(&mut self, phase: Phase) -> Option<&mut State> {
        self.states
            .iter_mut()
            .find(|(p, _)| *p == phase)
            .map(|(_, s)| s)
    }

    fn state(&self, phase: Phase) -> Option<&State> {
        self.states
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, s)| s)
    }

    /// `phase` starts now, unless it runs or ended already.
    pub(crate) fn start(&mut self, phase: Phase, now: Instant) {
        let started = now.saturating_duration_since(self.since);
        if let Some(s @ State::Pending) = self.state_mut(phase) {
            *s = State::Running { started };
        }
    }

    /// `phase` ends now with `outcome` (once: a later end is ignored). A phase that never ran
    /// reports no start when skipped, else a start and no time.
    pub(crate) fn end(&mut self, phase: Phase, now: Instant, outcome: PhaseOutcome) {
        let at = now.saturating_duration_since(self.since);
        let Some(s) = self.state_mut(phase) else {
            return;
        };
        let (started, took) = match s {
            State::Ended(_) => return,
            State::Running { started } => (Some(*started), at.saturating_sub(*started)),
            State::Pending if matches!(outcome, PhaseOutcome::Skipped(_)) => (None, Duration::ZERO),
            State::Pending => (Some(at), Duration::ZERO),
        };
        *s = State::Ended(PhaseReport {
            phase,
            started,
            took,
            outcome,
        });
    }

    /// Whether `phase` runs now.
    pub(crate) fn is_running(&self, phase: Phase) -> bool {
        matches!(self.state(phase), Some(State::Running { .. }))
    }

    /// Whether `phase` is over.
    pub(crate) fn has_ended(&self, phase: Phase) -> bool {
        matches!(self.state(phase), Some(State::Ended(_)))
    }

    /// Every running phase ends now with `outcome`.
    pub(crate) fn end_running(&mut self, now: Instant, outcome: &PhaseOutcome) {
        for phase in PHASES {
            if self.is_running(phase) {
                self.end(phase, now, outcome.clone());
            }
        }
    }

    /// The reports once the connect is over: running phases end now with `running`, phases
    /// never started are skipped as not applicable.
    pub(crate) fn close(&mut self, now: Instant, running: &PhaseOutcome) -> Vec<PhaseReport> {
        self.end_running(now, running);
        for phase in PHASES {
            self.end(phase, now, PhaseOutcome::Skipped(SkipReason::NotApplicable));
        }
        self.reports()
    }

    /// The reports of the phases that ended, in ladder order.
    pub(crate) fn reports(&self) -> Vec<PhaseReport> {
        self.states
            .iter()
            .filter_map(|(_, s)| match s {
                State::Ended(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PhaseFailure;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn a_phase_runs_once_and_ends_once() {
        let mut p = Phases::new(at(100));
        p.start(Phase::Direct, at(150));
        assert!(p.is_running(Phase::Direct));
        p.start(Phase::Direct, at(400));
        p.end(Phase::Direct, at(300), PhaseOutcome::Won);
        p.end(Phase::Direct, at(900), PhaseOutcome::Lost);
        assert!(p.has_ended(Phase::Direct) && !p.is_running(Phase::Direct));
        assert_eq!(
            p.reports(),
            vec![PhaseReport {
                phase: Phase::Direct,
                started: Some(Duration::from_millis(50)),
                took: Duration::from_millis(150),
                outcome: PhaseOutcome::Won,
            }]
        );
    }

    #[test]
    fn closing_ends_the_running_and_skips_the_pending_in_ladder_order() {
        let mut p = Phases::new(at(0));
        p.end(Phase::Resolve, at(10), PhaseOutcome::Done);
        p.start(Phase::Punch, at(20));
        p.end(
            Phase::Reverse,
            at(15),
            PhaseOutcome::Failed(PhaseFailure::NoOwnAddress),
        );
        let reports = p.close(at(70), &PhaseOutcome::Lost);
        let phases: Vec<Phase> = reports.iter().map(|r| r.phase).collect();
        assert_eq!(phases, PHASES.to_vec());
        let by = |ph: Phase| reports.iter().find(|r| r.phase == ph).unwrap().clone();
        assert_eq!(by(Phase::Punch).outcome, PhaseOutcome::Lost);
        assert_eq!(by(Phase::Punch).took, Duration::from_millis(50));
        assert_eq!(by(Phase::Reverse).started, Some(Duration::from_millis(15)));
        assert_eq!(
            by(Phase::Direct).outcome,
            PhaseOutcome::Skipped(SkipReason::NotApplicable)
        );
        assert_eq!(by(Phase::Direct).started, None);
        assert_eq!(by(Phase::Resolve).took, Duration::ZERO);
        assert_eq!(by(Phase::Resolve).started, Some(Duration::from_millis(10)));
    }
}
