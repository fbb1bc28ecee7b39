//! `builder render`.

use anyhow::Result;

use crate::artifact::Firstboot;
use crate::cli::RenderArgs;
use crate::fsutil;
use crate::render::{self, USER_DATA_LIMIT};
use crate::site::Site;

pub fn run(args: RenderArgs) -> Result<()> {
    let (site, _) = Site::load(&args.site)?;
    let firstboot = Firstboot::locate(args.firstboot.as_deref())?;
    let secrets = super::open_vault(&args.site, &args.vault)?.0;

    // Everything is rendered and checked before the first byte is written.
    let rendered = render::render_site(&site, &secrets, &firstboot, args.host.as_deref())?;
    fsutil::private_dir(&args.out)?;
    for config in &rendered {
        let path = args.out.join(config.file_name());
        fsutil::write_atomic(&path, &config.bytes, 0o600)?;
        println!(
            "{}\t{} bytes\t{:.0}% of the user-data limit",
            path.display(),
            config.bytes.len(),
            100.0 * config.bytes.len() as f64 / USER_DATA_LIMIT as f64
        );
    }
    tracing::info!(
        "rendered {} config{} for {}; nodes fetch firstboot from {}",
        rendered.len(),
        if rendered.len() == 1 { "" } else { "s" },
        site.domain,
        firstboot.url(&site.publish.base_url())
    );
    Ok(())
}
