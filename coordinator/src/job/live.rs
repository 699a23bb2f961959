//! Live recovery: what the ranks of an ended generation still hold in memory
//! ([`LiveOffer`], sent with their Join), and the choice, when the next generation forms,
//! between starting from those survivors' state ([`LiveSource`]) and from the last
//! committed checkpoint ([`Job::resume_from`]).
//!
//! A rank's offer is its state after `step` steps (the network, its momentum and the run
//! state, the same bytes on every rank) and the classifier shards it holds: its own and
//! its replica of the next rank's. A group of offers from one generation at one step is
//! complete when together they hold every shard of that generation; the newest complete
//! group is taken when it is not older than the last checkpoint. States of one *lineage*
//! (the generations since the last start from a checkpoint or from scratch) lie on one
//! trajectory, so an offer from before the lineage began is never taken.

use std::collections::{BTreeMap, BTreeSet};

use lgaf_proto::v1;
use serde::{Deserialize, Serialize};

use super::{Job, JobError, Result, Worker};

/// What a rank of an ended generation holds in memory ([`v1::LiveOffer`], checked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveOffer {
    /// The generation it trained in, and that generation's world size.
    pub generation: u64,
    pub world_size: u32,
    /// Steps completed.
    pub step: u64,
    /// The classifier shards it holds, by rank of `generation`.
    pub shards: BTreeSet<u32>,
}

impl LiveOffer {
    /// The offer of a Join, refused (naming the field) when it cannot be a rank's state:
    /// no shards, a shard past its world size, or a generation that has not yet been.
    pub(super) fn from_request(offer: &v1::LiveOffer, newest_generation: u64) -> Result<LiveOffer> {
        if offer.generation == 0 || offer.generation > newest_generation {
            return Err(JobError::invalid(
                "live.generation",
                format!(
                    "{}: generations so far are 1..={newest_generation}",
                    offer.generation
                ),
            ));
        }
        if offer.world_size == 0 {
            return Err(JobError::invalid("live.world_size", "must be at least 1"));
        }
        if offer.shards.is_empty() {
            return Err(JobError::invalid("live.shards", "missing"));
        }
        if let Some(bad) = offer.shards.iter().find(|&&s| s >= offer.world_size) {
            return Err(JobError::invalid(
                "live.shards",
                format!("shard {bad} of a generation of {} ranks", offer.world_size),
            ));
        }
        Ok(LiveOffer {
            generation: offer.generation,
            world_size: offer.world_size,
            step: offer.step,
            shards: offer.shards.iter().copied().collect(),
        })
    }
}

/// Where a generation that starts from its survivors gets the state: ranks of the new
/// generation that broadcast it ([`v1::LiveResume`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSource {
    /// The step the survivors completed; the generation trains the next one.
    pub step: u64,
    /// The generation they trained in, and its world size (the shards' numbering).
    pub source_generation: u64,
    pub source_world_size: u32,
    /// The rank that sends the network, its momentum and the run state.
    pub state_rank: u32,
    /// By shard of the source generation: the rank that sends it.
    pub shard_ranks: Vec<u32>,
}

impl LiveSource {
    pub fn to_proto(&self) -> v1::LiveResume {
        v1::LiveResume {
            step: self.step,
            source_generation: self.source_generation,
            source_world_size: self.source_world_size,
            state_rank: self.state_rank,
            shard_ranks: self.shard_ranks.clone(),
        }
    }
}

/// Offers by (step, generation, world size), each with the new rank that made it.
type OfferGroups<'a> = BTreeMap<(u64, u64, u32), Vec<(u32, &'a LiveOffer)>>;

/// Where the next generation starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ResumeFrom {
    Live(LiveSource),
    /// The last committed checkpoint (or scratch), and why not the survivors (None when
    /// no rank survived anything: the first generation, or no offers after a growth).
    Checkpoint {
        not_live: Option<String>,
    },
}

impl Job {
    /// When the running generation started from survivors' state and ends before any rank
    /// trained past it (the transfer failed, or the first step), that source is not taken
    /// again: the same offers would most likely fail the same way, each time spending a
    /// restart. States of later generations stay eligible.
    pub(super) fn retire_failed_live_source(&mut self) {
        let Some(g) = self.generation.as_ref().filter(|g| g.ended.is_none()) else {
            return;
        };
        let Some(live) = &g.live else { return };
        let progressed = g
            .members
            .iter()
            .filter_map(|id| self.workers.get(id))
            .any(|w| w.step > g.start_step);
        if !progressed {
            self.lineage = self.lineage.max(live.source_generation + 1);
        }
    }

    /// Where a generation of `members` (by new rank) starts: from the newest complete
    /// group of their offers when it is not older than the last committed checkpoint,
    /// else from that checkpoint, saying why.
    pub(super) fn resume_from(&self, members: &[&Worker]) -> ResumeFrom {
        let offered = members.iter().filter(|w| w.offer.is_some()).count();
        if offered == 0 {
            return ResumeFrom::Checkpoint {
                not_live: self.ended_generation().map(|g| {
                    format!(
                        "no rank of generation {g} offered its state (none survived, or \
                         checkpoint.live_recovery is off)"
                    )
                }),
            };
        }
        // Offers of one generation at one step, and the new ranks that made them.
        let mut groups: OfferGroups = BTreeMap::new();
        let mut stale = Vec::new();
        for (rank, w) in members.iter().enumerate() {
            let Some(offer) = &w.offer else { continue };
            if offer.generation < self.lineage {
                stale.push(format!("{} (generation {})", w.id, offer.generation));
                continue;
            }
            groups
                .entry((offer.step, offer.generation, offer.world_size))
                .or_default()
                .push((rank as u32, offer));
        }
        let complete = groups
            .iter()
            .rev()
            .find_map(|(&(step, generation, world), group)| {
                let shard_ranks: Option<Vec<u32>> = (0..world)
                    .map(|shard| {
                        group
                            .iter()
                            .find(|(_, o)| o.shards.contains(&shard))
                            .map(|(rank, _)| *rank)
                    })
                    .collect();
                Some(LiveSource {
                    step,
                    source_generation: generation,
                    source_world_size: world,
                    state_rank: group[0].0,
                    shard_ranks: shard_ranks?,
                })
            });
        let committed = self.last_commit.as_ref().map_or(0, |c| c.step);
        let total = self.schedule.map_or(u64::MAX, |s| s.total_steps);
        match complete {
            // The run's last step must end on its committed checkpoint, which a generation
            // starting there would never write.
            Some(live) if live.step >= total && committed < live.step => ResumeFrom::Checkpoint {
                not_live: Some(format!(
                    "the survivors completed the run's last step ({}), whose checkpoint was not \
                     committed",
                    live.step
                )),
            },
            Some(live) if live.step >= committed => ResumeFrom::Live(live),
            Some(live) => ResumeFrom::Checkpoint {
                not_live: Some(format!(
                    "the survivors' state (step {}) is older than the checkpoint at step \
                     {committed}",
                    live.step
                )),
            },
            None => ResumeFrom::Checkpoint {
                not_live: Some(incomplete(&groups, &stale, self.lineage)),
            },
        }
    }
}

/// Why no group of offers holds every shard, in words: for each group, the shards it
/// lacks (their owner and the rank holding their replica were both lost).
fn incomplete(groups: &OfferGroups, stale: &[String], lineage: u64) -> String {
    let mut parts: Vec<String> = groups
        .iter()
        .map(|(&(step, generation, world), group)| {
            let held: BTreeSet<u32> = group
                .iter()
                .flat_map(|(_, o)| o.shards.iter().copied())
                .collect();
            let missing: Vec<String> = (0..world)
                .filter(|s| !held.contains(s))
                .map(|s| s.to_string())
                .collect();
            format!(
                "{} survivor(s) of generation {generation} at step {step} lack classifier \
                 shard(s) {} of {world} (each lost with its owner and the rank holding its \
                 replica)",
                group.len(),
                missing.join(", ")
            )
        })
        .collect();
    if !stale.is_empty() {
        parts.push(format!(
            "offers of generations before {} were ignored (before the last start from a \
             checkpoint, or a transfer from them failed): {}",
            lineage,
            stale.join(", ")
        ));
    }
    parts.join("; ")
}
