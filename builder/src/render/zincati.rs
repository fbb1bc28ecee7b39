//! Zincati's configuration drop-in: Fedora CoreOS's update agent reboots a
//! node for an OS update only when the site's lock server lets it.

use node_contract::{fleetlock, Role};

/// The drop-in for a host of `role`, comments first: they are what an
/// operator reading `/etc/zincati/config.d/` on a node sees.
pub fn dropin(role: Role) -> String {
    let group = fleetlock::group(role);
    let why_group = match role {
        Role::Core => {
            "# Group `core`: one core host at a time, and only while etcd has all\n\
             # its members healthy and caught up and another FreeIPA server is\n\
             # healthy; the lock is released once this host's own etcd member and\n\
             # FreeIPA server are healthy again.\n"
        }
        Role::Worker => {
            "# Group `workers`: workers have slots of their own (a quarter of them\n\
             # at once, at least one), apart from the core hosts.\n"
        }
    };
    format!(
        "# Written by `builder render`. OS updates reboot this node only when the\n\
         # site's lock server lets it (Zincati's `fleet_lock` strategy). The\n\
         # default, `immediate`, reboots as soon as an update is staged: a new\n\
         # droplet of an older release would reboot in the middle of its first\n\
         # boot, and nothing would keep the core hosts from rebooting together,\n\
         # which takes etcd's quorum and every FreeIPA server down at once.\n\
         # No reboot is allowed until every node of the site is assembled.\n\
         #\n\
         # The URL is firstboot's relay on this node: Zincati sends no\n\
         # credential, so the relay forwards to any core host's lock server\n\
         # with this node's identity certificate. It ends with `/` because\n\
         # Zincati joins `v1/pre-reboot` to it.\n\
         {why_group}\
         \n\
         [updates]\n\
         strategy = \"fleet_lock\"\n\
         \n\
         [updates.fleet_lock]\n\
         base_url = \"{}\"\n\
         \n\
         [identity]\n\
         group = \"{group}\"\n",
        fleetlock::base_url()
    )
}
