//! One generation of a rank: join, form the collective group, build the trainer on this
//! rank's shards, resume from the checkpoint the coordinator names, and train to the end
//! ([`super::epochs`]).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use lgaf_collective::nccl::{NcclCommunicator, NcclUniqueId};
use lgaf_collective::tcp::{TcpGroup, TcpOptions};
use lgaf_proto::v1::{self, CollectiveBackend, TrainingFacts};
use lgaf_proto::API_VERSION;
use lgaf_store::history::Source;
use lgaf_store::{BlockingRunStore, HistoryWriter};
use lgaf_telemetry::propagation;
use tonic::metadata::MetadataMap;
use tracing::{info, info_span};

use super::heartbeat::Heartbeat;
use super::{checkpoint, epochs, live, Membership, Observer, Result, RunError, WorkerArgs};
use crate::config::TrainConfig;
use crate::coordinator_client::Client;
use crate::data_parallel::{Group, HostCollective, NcclCollective};
use crate::device::parse_device;
use crate::loader::open_source;
use crate::trainer::Trainer;

/// Joins the next generation and trains in it to the end; returns the steps completed.
/// `member.generation` is the generation left (0 at first) and becomes the one joined.
///
/// Traced as the coordinator's generation: the Join is a span under the job's context, and
/// everything after it (forming the group, resuming, the steps) is under a `generation`
/// span whose parent is the coordinator's span of that generation.
pub(super) fn train(
    args: &WorkerArgs,
    client: &Client,
    member: &mut Membership,
    observer: &Observer,
    listener: TcpListener,
) -> Result<u64> {
    let registered = &member.registered;
    let mut cfg = TrainConfig::from_toml_str(&registered.config_toml)?;
    cfg.train.device = args.device.clone();
    cfg.train.progress = false;
    let facts = facts(&cfg)?;
    let join_span = info_span!("join", left_generation = member.generation);
    propagation::set_parent(&join_span, &observer.job_trace);
    let offer = member.live.as_ref().map(live::Held::offer);
    let (joined, generation_trace) =
        join_span.in_scope(|| join(client, registered, facts, member.generation, offer))?;
    drop(join_span);
    member.generation = joined.generation;
    let registered = &member.registered;
    observer.metrics.joined(&observer.rank, joined.rank);
    let generation_span = info_span!(
        "generation",
        generation = joined.generation,
        rank = joined.rank,
        world_size = joined.world_size,
        resume_step = joined.resume_step,
    );
    propagation::set_parent(&generation_span, &generation_trace);
    let _generation = generation_span.enter();

    // From here on the coordinator hears from this rank even while it forms the group,
    // builds the model or downloads a checkpoint, and this rank notices a vanished
    // coordinator.
    let heartbeat = {
        let (metrics, rank) = (observer.metrics.clone(), observer.rank.clone());
        Heartbeat::start(
            client.clone_handle(),
            registered.worker_id.clone(),
            joined.generation,
            (
                Duration::from_millis(u64::from(registered.heartbeat_interval_ms).max(100)),
                Duration::from_millis(u64::from(registered.heartbeat_deadline_ms).max(1000)),
            ),
            move |round_trip| metrics.record_heartbeat(&rank, round_trip),
        )
    };
    let group = info_span!("form_group", backend = ?joined.backend())
        .in_scope(|| form_group(args, client, registered, &joined, listener, &heartbeat))?;
    let data_world_size = joined.data_shard_count();
    let mut trainer = info_span!("build_trainer")
        .in_scope(|| Trainer::with_data_shards(cfg, group, data_world_size))?;
    trainer.set_trace_step_every(observer.trace_step_every);
    if trainer.steps_per_epoch() != joined.steps_per_epoch {
        return Err(RunError::Other(format!(
            "steps per epoch: the coordinator computed {}, this worker's sampler {}",
            joined.steps_per_epoch,
            trainer.steps_per_epoch()
        )));
    }
    let store = BlockingRunStore::from_url(&registered.store_url, &registered.run_id)?;
    if let Some(plan) = &joined.live {
        info_span!("live_resume", step = plan.step).in_scope(|| {
            live::receive(&mut trainer, member.live.as_ref(), plan, facts.num_classes)
        })?;
        heartbeat.record_step(trainer.steps_done());
    } else if joined.resume_step > 0 {
        info_span!("resume", step = joined.resume_step).in_scope(|| {
            checkpoint::resume(&mut trainer, &store, joined.resume_step, facts.num_classes)
        })?;
        // The step this job continues at (`resume_step` is the checkpoint's own, of the
        // run that saved it, which may have had other steps per epoch).
        heartbeat.record_step(trainer.steps_done());
    }
    // The trainer holds the run's state now: what was kept of an earlier generation is
    // superseded (until this generation started, a failed transfer could still use it).
    member.live = None;
    if joined.rank == 0 {
        // Rank 0 writes the run's steps, going on from where this generation resumed.
        let history = HistoryWriter::start(
            store.run().clone(),
            Source::Rank0,
            joined.generation,
            trainer.steps_done(),
        )
        .map_err(crate::WorkerError::from)?;
        trainer.set_history(history);
    }
    let outcome = epochs::train(
        &mut trainer,
        client,
        &member.registered,
        &joined,
        &store,
        heartbeat,
        observer,
    );
    if outcome.as_ref().is_err_and(RunError::ends_generation_only) {
        // A failed step leaves the trainer at the last completed one: offer that.
        member.live = live::Held::keep(&trainer, joined.generation);
    }
    outcome
}

/// What the coordinator checks every worker agrees on before it forms a generation.
fn facts(cfg: &TrainConfig) -> Result<TrainingFacts> {
    let source = open_source(&cfg.data).map_err(crate::WorkerError::from)?;
    Ok(TrainingFacts {
        num_samples: source.len() as u64,
        num_classes: source.num_classes() as u64,
        batch_size: cfg.data.batch_size as u64,
        epochs: cfg.train.epochs as u64,
        max_steps: cfg.train.max_steps,
        checkpoint_every_steps: cfg.checkpoint.every_steps,
        keep_last: cfg.checkpoint.keep_last as u64,
        seed: cfg.train.seed,
    })
}

/// Joins the generation after `left_generation`. A Join waits (on the coordinator) until
/// this worker's generation forms: for the rest of the job's workers, the end of an elastic
/// grace period, or the next checkpoint of a smaller generation this worker is to grow.
/// Each call waits at most the coordinator's long-poll limit and then says what it waits
/// for; call again.
fn join(
    client: &Client,
    registered: &v1::RegisterReply,
    facts: TrainingFacts,
    left_generation: u64,
    live: Option<v1::LiveOffer>,
) -> Result<(v1::JoinReply, MetadataMap)> {
    let join = v1::JoinRequest {
        api_version: API_VERSION,
        worker_id: registered.worker_id.clone(),
        facts: Some(facts),
        left_generation,
        live,
    };
    let (generation_trace, joined, _) = loop {
        let reply = client.rt.block_on(client.send_for_response(
            "Join",
            join.clone(),
            |mut c, r| async move { c.join(r).await },
        ));
        match reply {
            Ok(reply) => break reply.into_parts(),
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                info!(
                    waiting_for = status.message(),
                    "no generation yet; joining again"
                );
            }
            Err(status) => return Err(client.failed("Join", status).into()),
        }
    };
    let data_world_size = joined.data_shard_count();
    info!(
        generation = joined.generation,
        rank = joined.rank,
        world_size = joined.world_size,
        data_shards = ?lgaf_proto::data_shards(joined.rank, joined.world_size, data_world_size),
        total_steps = joined.total_steps,
        resume_step = joined.resume_step,
        "joined"
    );
    Ok((joined, generation_trace))
}

/// The generation's collective group on the backend the coordinator chose, aborted by the
/// heartbeat once the generation is over (so a collective waiting on a dead peer returns).
fn form_group(
    args: &WorkerArgs,
    client: &Client,
    registered: &v1::RegisterReply,
    joined: &v1::JoinReply,
    listener: TcpListener,
    heartbeat: &Heartbeat,
) -> Result<Group> {
    let timeout = Duration::from_millis(u64::from(joined.collective_timeout_ms).max(1000));
    match joined.backend() {
        CollectiveBackend::Cpu => {
            let group = TcpGroup::connect(
                joined.rank as usize,
                &joined.peers,
                listener,
                TcpOptions {
                    op_timeout: timeout,
                    connect_timeout: Duration::from_secs(60),
                    group_tag: joined.generation,
                },
            )?;
            let abort = group
                .abort_handle()
                .map_err(|e| RunError::Other(format!("collective group: {e}")))?;
            heartbeat.on_stop(Box::new(move || abort.abort()));
            Ok(Group::Host(Arc::new(HostCollective::new(Arc::new(group)))))
        }
        CollectiveBackend::Nccl => {
            drop(listener);
            let device = parse_device(&args.device)?;
            let nccl = nccl_group(client, registered, joined, device, timeout)?;
            let abort = nccl.abort_handle();
            heartbeat.on_stop(Box::new(move || {
                abort.abort("the coordinator ended the generation")
            }));
            Ok(Group::Nccl(Arc::new(nccl)))
        }
        other => Err(RunError::Other(format!(
            "the coordinator named collective backend {other:?}, which this worker does not \
             know"
        ))),
    }
}

/// Forms the generation's NCCL communicator on `device`: rank 0 makes the unique id (in this
/// process, which must stay alive while the others connect to it) and publishes it through
/// the coordinator; the other ranks wait for it there.
fn nccl_group(
    client: &Client,
    registered: &v1::RegisterReply,
    joined: &v1::JoinReply,
    device: tch::Device,
    timeout: Duration,
) -> Result<NcclCollective> {
    let tch::Device::Cuda(index) = device else {
        return Err(RunError::Other(format!(
            "the coordinator chose NCCL for this generation, but this worker trains on {device:?}"
        )));
    };
    let id = if joined.rank == 0 {
        let id = NcclUniqueId::new()?;
        let publish = v1::PublishNcclIdRequest {
            api_version: API_VERSION,
            worker_id: registered.worker_id.clone(),
            generation: joined.generation,
            nccl_id: id.to_bytes(),
        };
        client.call("PublishNcclId", publish, |mut c, r| async move {
            c.publish_nccl_id(r).await
        })?;
        id
    } else {
        let get = v1::GetNcclIdRequest {
            api_version: API_VERSION,
            worker_id: registered.worker_id.clone(),
            generation: joined.generation,
        };
        let reply = client.call("GetNcclId", get, |mut c, r| async move {
            c.get_nccl_id(r).await
        })?;
        NcclUniqueId::from_bytes(&reply.nccl_id)?
    };
    let comm = NcclCommunicator::new(
        &id,
        joined.rank as usize,
        joined.world_size as usize,
        index,
        timeout,
    )?;
    info!(
        rank = joined.rank,
        world_size = joined.world_size,
        device = index,
        "NCCL communicator formed"
    );
    Ok(NcclCollective::on_cuda(comm))
}
