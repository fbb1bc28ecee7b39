use super::*;
use node_contract::{
    Catalog, DomainName, HostName, Identity, JoinConfig, Platform, Realm, Seed, SigningKey,
    SiteInfo, VpcRange,
};

/// A worker's context under a scratch root (no bootstrap services).
fn context(root: &std::path::Path) -> Context {
    let config = lab_config("node4");
    let paths = Paths::under(root);
    Context {
        reporter: Reporter::new(paths.status_file()),
        state: State::load(&paths.state_file()).unwrap(),
        paths,
        config,
        services: None,
        discovery: Discovery::default(),
    }
}

/// `node`'s config in a lab site of three core hosts and a worker.
pub(crate) fn lab_config(node: &str) -> NodeConfig {
    let domain = DomainName::parse("lab.example.org").unwrap();
    let node = HostName::parse(node).unwrap();
    let site = SigningKey::from_seed(&Seed::from_bytes([9; 32]));
    let seed = Seed::from_bytes([4; 32]);
    let ticket = site.ticket(
        &domain,
        &node,
        node_contract::Role::Worker,
        node_contract::Generation::FIRST,
        SigningKey::from_seed(&seed).public_key(),
    );
    NodeConfig {
        schema: node_contract::SCHEMA_VERSION,
        site: SiteInfo {
            domain,
            realm: Realm::parse("LAB.EXAMPLE.ORG").unwrap(),
            vpc_range: VpcRange::parse("198.18.0.0/24").unwrap(),
            core: ["node1", "node2", "node3"]
                .iter()
                .map(|n| HostName::parse(n).unwrap())
                .collect(),
            host_count: 4,
            site_key: site.public_key(),
        },
        node,
        identity: Identity {
            key: seed,
            generation: node_contract::Generation::FIRST,
            ticket_signature: ticket.signature,
            ca_backup_key: None,
            admission: None,
        },
        join: JoinConfig {
            port: 7443,
            address: None,
        },
        platform: Platform {
            metadata: "198.19.169.254".parse().unwrap(),
        },
        catalog: Catalog::new(),
        freeipa: None,
        storage: Default::default(),
    }
}

/// Phases that succeed, except those in `failures`, which fail that many
/// times first; every call is recorded.
struct Script {
    calls: Vec<Phase>,
    failures: std::collections::HashMap<Phase, u32>,
}

impl Phases for Script {
    async fn run(&mut self, _cx: &mut Context, phase: Phase) -> Result<()> {
        self.calls.push(phase);
        if let Some(left) = self.failures.get_mut(&phase) {
            if *left > 0 {
                *left -= 1;
                bail!("{phase} not ready");
            }
        }
        Ok(())
    }
}

const QUICK: Patience = Patience {
    attempts: 3,
    first_backoff: Duration::from_millis(1),
    max_backoff: Duration::from_millis(2),
};

#[tokio::test]
async fn phases_run_in_order_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cx = context(dir.path());
    let mut script = Script {
        calls: vec![],
        failures: [(Phase::Join, 2)].into(),
    };
    run_all(&mut cx, &QUICK, &mut script).await.unwrap();
    use Phase::*;
    assert_eq!(
        script.calls,
        [Identify, Storage, Join, Join, Join, Etcd, Freeipa, Handoff]
    );
    let saved = State::load(&cx.paths.state_file()).unwrap();
    assert_eq!(saved.completed, Phase::ALL);
    let status =
        node_contract::status::Status::from_json(&std::fs::read(cx.paths.status_file()).unwrap())
            .unwrap();
    assert_eq!(status.phase, Phase::ALL.last().copied());
}

#[tokio::test]
async fn a_restart_resumes_at_the_first_phase_not_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut cx = context(dir.path());
    // join never succeeds within its patience: the run stops there.
    let mut script = Script {
        calls: vec![],
        failures: [(Phase::Join, 99)].into(),
    };
    let err = run_all(&mut cx, &QUICK, &mut script)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("phase join failed after 3 attempts") && err.contains("bootstrap host"),
        "{err}"
    );
    let status =
        node_contract::status::Status::from_json(&std::fs::read(cx.paths.status_file()).unwrap())
            .unwrap();
    assert_eq!(status.state, Progress::Failed);

    // The next run (systemd restarts the unit) starts at join.
    let mut cx = context(dir.path());
    let mut script = Script {
        calls: vec![],
        failures: Default::default(),
    };
    run_all(&mut cx, &QUICK, &mut script).await.unwrap();
    assert_eq!(
        script.calls,
        [Phase::Join, Phase::Etcd, Phase::Freeipa, Phase::Handoff]
    );
}
