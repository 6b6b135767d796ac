//! `loadgen`: palaver's load generator, and the same load against its peers.
//!
//! ```text
//! loadgen SCENARIO [--palaver URL[,URL…] --palaver-pid PID --palaver-admin HOST:PORT[,…]]
//!                  [--nats URL --nats-pid PID]
//!                  [--socketio URL --socketio-pid PID] [--xmpp URL --xmpp-pid PID] [options]
//! ```
//! Run `loadgen help` for the scenarios and their options; bench/run.sh runs them all and
//! writes docs/BENCHMARKS.md.

use bench::{args::Args, group, presence, scenarios};

const HELP: &str = "\
loadgen SCENARIO [servers] [options]

servers (each measured in turn, palaver first; URLs on 127.0.0.0/8 only):
  --palaver ws://127.0.0.1:PORT/ws[,URL…]   --palaver-pid PID[,PID…]
  --palaver-admin 127.0.0.1:PORT[,…]        each node's admin port (its /metrics and /cluster)
  --nats ws://127.0.0.1:PORT                 --nats-pid PID
  --socketio 'ws://127.0.0.1:PORT/socket.io/?EIO=4&transport=websocket'  --socketio-pid PID
  --xmpp ws://127.0.0.1:PORT/ws --xmpp-domain localhost  --xmpp-pid PID
  --only KIND[,KIND]   --encoding json|msgpack (palaver)
  --no-batch           palaver: one frame per WebSocket message (default: ask for batched frames)

scenarios:
  accounts         --n 1000 --tokens FILE              make palaver users 1..N, write their tokens
  idle             --n 1000 --settle 5 [--tokens FILE] resident memory per idle authenticated connection
  fanout           --n 1000 --rate 0[,R…] --window 64 --duration 10 --warmup 2 [--repeat 1]
                                                       one room, N receivers; rate 0 = as fast as the window allows;
                                                       --repeat R: R rounds, the servers taking turns in each
                                                       (then each server's median round is marked)
                                                       each phase reports the server's CPU per delivery and per
                                                       message (needs --KIND-pid) and the load generator's own CPU
                                                       (SATURATED above 90% of the CPUs it may use)
  saturation       --n 100 --from 50 --factor 1.5 --steps 14 --p99-ms 20 --duration 5 [--full]
                                                       (--full: every step, for the latency curve)
  many-rooms       --rooms 100 --size 10 --rate 1 [--no-direct] --duration 10
  reconnect-storm  --clients 1000 --backlog 100          (palaver only)
  cross-node       like fanout; publisher on the first palaver URL, receivers on the others;
                   --owner publisher,receivers: the room on either node, each in turn
  presence         --n 10000 --duration 60 --per-minute 1 --settle 3 [--tokens FILE]
                   [--watchers 0 --watch 100] --status-bytes 40 --sources 4
                   --palaver URL_A,URL_B --palaver-pid PID_A,PID_B --palaver-admin ADMIN_A,ADMIN_B
                   (or --start-cluster [--nodes 2]
                   [--node-env KEY=VALUE]…, binary $NODE_BIN or palaver beside loadgen)
                                                       N users on node A change state per-minute times a
                                                       minute: inter-node presence messages/s, memory per
                                                       online user on node B (which holds none of them)

common: --procs P (connections split over P processes) --sources S (source addresses 127.0.k.1)
        --latency-every 50 (fan-out: one receiver in 50 records latency, the others only count)
        --concurrency 64 (set-up in parallel) --body 100 (bytes) --json FILE (results)
";

fn main() -> anyhow::Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some(scenario) = raw.first().cloned() else {
        eprint!("{HELP}");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if scenario == "worker" {
        return runtime.block_on(group::worker_main());
    }
    if matches!(scenario.as_str(), "help" | "--help" | "-h") {
        print!("{HELP}");
        return Ok(());
    }
    let args = Args::parse(&raw[1..])?;
    let command = format!("loadgen {}", raw.join(" "));
    runtime.block_on(async {
        match scenario.as_str() {
            "idle" => scenarios::idle(&args, &command).await,
            "accounts" => scenarios::accounts(&args).await,
            "fanout" => scenarios::fanout(&args, &command, false).await,
            "cross-node" => scenarios::fanout(&args, &command, true).await,
            "saturation" => scenarios::saturation(&args, &command).await,
            "many-rooms" => scenarios::many_rooms(&args, &command).await,
            "reconnect-storm" => scenarios::reconnect_storm(&args, &command).await,
            "presence" => presence::presence(&args, &command).await,
            other => {
                eprint!("unknown scenario `{other}`\n\n{HELP}");
                std::process::exit(2);
            }
        }
    })
}
