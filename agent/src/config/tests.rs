use super::*;

const FULL: &str = r#"
nodeName: node-21
interfaces: [eth0, eth1]
loadBalancerClass: null
bgp:
  asn: 65100
  routerId: 10.0.0.21
  peers:
    - address: 10.0.0.1
      asn: 65000
      holdTime: 9s
      keepaliveTime: 3s
      password: s3cret
      port: 179
  advertisement:
    communities: ["65000:100"]
    largeCommunities: ["65100:1:1"]
    localPref: 100
    med: 100
  gracefulRestart:
    restartTime: 60s
l2:
  enabled: true
admin:
  listen: 127.0.0.1:9469
"#;

fn load_text(text: &str, overrides: Overrides) -> Result<Config, ConfigError> {
    let raw = parse(text).map_err(|message| ConfigError::Parse {
        path: "test.yaml".into(),
        message,
    })?;
    validate(raw, overrides, Some("host-a".into()))
}

fn error_of(text: &str) -> String {
    load_text(text, Overrides::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn the_design_example_parses_with_every_field() {
    let config = load_text(FULL, Overrides::default()).unwrap();
    assert_eq!(config.node_name, "node-21");
    assert_eq!(config.interfaces, ["eth0", "eth1"]);
    assert_eq!(config.load_balancer_class, None);
    let bgp = config.bgp.unwrap();
    assert_eq!(bgp.asn, 65100);
    assert_eq!(bgp.router_id, Some(Ipv4Addr::new(10, 0, 0, 21)));
    assert_eq!(
        bgp.peers,
        [PeerConfig {
            address: "10.0.0.1".parse().unwrap(),
            asn: 65000,
            hold_time: Duration::from_secs(9),
            keepalive_time: Duration::from_secs(3),
            password: Some("s3cret".into()),
            port: 179,
        }]
    );
    assert_eq!(bgp.advertisement.communities, [(65000, 100)]);
    assert_eq!(bgp.advertisement.large_communities, [(65100, 1, 1)]);
    assert_eq!(bgp.advertisement.local_pref, Some(100));
    assert_eq!(bgp.advertisement.med, Some(100));
    assert_eq!(bgp.graceful_restart_time, Duration::from_secs(60));
    assert!(config.l2.enabled);
    assert_eq!(config.admin_listen, "127.0.0.1:9469".parse().unwrap());
    assert_eq!(config.bpffs_dir, Path::new(DEFAULT_BPFFS_DIR));
}

#[test]
fn flags_override_the_file() {
    let config = load_text(
        FULL,
        Overrides {
            node_name: Some("node-99".into()),
            interfaces: vec!["ens3".into()],
            bpffs_dir: Some("/run/vw".into()),
            heartbeat_timeout: Some(Duration::from_secs(7)),
            admin_listen: Some("127.0.0.1:1".parse().unwrap()),
        },
    )
    .unwrap();
    assert_eq!(config.node_name, "node-99");
    assert_eq!(config.interfaces, ["ens3"]);
    assert_eq!(config.bpffs_dir, Path::new("/run/vw"));
    assert_eq!(config.l2.heartbeat_timeout, Duration::from_secs(7));
    assert_eq!(config.admin_listen.port(), 1);
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let config = load_text("interfaces: [eth0]\n", Overrides::default()).unwrap();
    assert_eq!(config.node_name, "host-a");
    assert_eq!(config.bgp, None);
    assert!(config.l2.enabled);
    assert_eq!(config.l2.heartbeat_timeout, DEFAULT_HEARTBEAT_TIMEOUT);
    assert_eq!(config.l4.maglev_table_size, DEFAULT_MAGLEV_TABLE_SIZE);
    let l4 = load_text(
        "interfaces: [eth0]\nl4: {maglevTableSize: 16381}\n",
        Overrides::default(),
    );
    assert_eq!(l4.unwrap().l4.maglev_table_size, 16381);
    let bgp = load_text(
        "interfaces: [eth0]\nbgp: {asn: 1, peers: [{address: 'fd00::1', asn: 2}]}\n",
        Overrides::default(),
    )
    .unwrap()
    .bgp
    .unwrap();
    assert_eq!(bgp.peers[0].hold_time, Duration::from_secs(90));
    assert_eq!(bgp.peers[0].keepalive_time, Duration::from_secs(30));
    assert_eq!(bgp.peers[0].port, 179);
    assert_eq!(bgp.graceful_restart_time, DEFAULT_RESTART_TIME);
    assert_eq!(bgp.advertisement.med, None);
}

#[test]
fn graceful_restart_can_be_disabled_and_is_bounded() {
    let time = |text: &str| {
        load_text(
            &format!(
                "interfaces: [eth0]\nbgp: {{asn: 1, gracefulRestart: {{restartTime: {text}}}}}\n"
            ),
            Overrides::default(),
        )
        .map(|c| c.bgp.unwrap().graceful_restart_time)
    };
    assert_eq!(time("0s").unwrap(), Duration::ZERO);
    assert_eq!(time("4095s").unwrap(), Duration::from_secs(4095));
    for bad in ["4096s", "1500ms", "later"] {
        let message = time(bad).unwrap_err().to_string();
        assert!(
            message.contains("bgp.gracefulRestart.restartTime"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn bad_input_names_the_field() {
    let cases = [
        ("interfaces: [eth0]\nbogus: 1\n", "bogus"),
        ("interfaces: []\n", "interfaces"),
        ("interfaces: [\"this-name-is-too-long\"]\n", "interfaces[0]"),
        ("interfaces: [eth0, eth1, eth0]\n", "interfaces[2]"),
        ("interfaces: [eth0]\nbgp: {asn: 0}\n", "bgp.asn"),
        (
            "interfaces: [eth0]\nbgp: {asn: 1, routerId: nope}\n",
            "bgp.routerId",
        ),
        (
            "interfaces: [eth0]\nbgp: {asn: 1, peers: [{address: x, asn: 2}]}\n",
            "bgp.peers[0].address",
        ),
        (
            "interfaces: [eth0]\nbgp: {asn: 1, peers: [{address: 10.0.0.1, asn: 2, holdTime: 2s}]}\n",
            "bgp.peers[0].holdTime",
        ),
        (
            "interfaces: [eth0]\nbgp: {asn: 1, peers: [{address: 10.0.0.1, asn: 2, holdTime: 9s, keepaliveTime: 9s}]}\n",
            "bgp.peers[0].keepaliveTime",
        ),
        (
            "interfaces: [eth0]\nbgp: {asn: 1, peers: [{address: 10.0.0.1, asn: 2, holdTime: soon}]}\n",
            "bgp.peers[0].holdTime",
        ),
        (
            "interfaces: [eth0]\nbgp: {asn: 1, advertisement: {communities: ['70000:1']}}\n",
            "bgp.advertisement.communities[0]",
        ),
        (
            "interfaces: [eth0]\nbgp: {asn: 1, advertisement: {largeCommunities: ['1:2']}}\n",
            "bgp.advertisement.largeCommunities[0]",
        ),
        (
            "interfaces: [eth0]\nbgp: {asn: 1, peers: [{address: 10.0.0.1}]}\n",
            "asn",
        ),
        (
            "interfaces: [eth0]\nadmin: {listen: localhost}\n",
            "admin.listen",
        ),
        (
            "interfaces: [eth0]\nl2: {heartbeatTimeout: 10ms}\n",
            "l2.heartbeatTimeout",
        ),
        ("interfaces: eth0\n", "interfaces"),
        (
            "interfaces: [eth0]\nl4: {maglevTableSize: 1000}\n",
            "l4.maglevTableSize",
        ),
        (
            "interfaces: [eth0]\nl4: {maglevTableSize: -1}\n",
            "l4.maglevTableSize",
        ),
    ];
    for (text, field) in cases {
        let message = error_of(text);
        assert!(
            message.contains(field),
            "{text:?}: {message:?} does not name {field}"
        );
        assert!(
            !message.contains('\n'),
            "{text:?}: error is not one line: {message:?}"
        );
    }
}
