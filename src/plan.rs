//! `flashsale-operator plan`: the timeline and what each phase does, for change review.

use anyhow::Context as _;
use jiff::{Timestamp, tz::TimeZone};
use std::{fmt::Write as _, io::Read, path::Path};

use crate::{
    api::{FlashSale, Phase},
    timeline::{self, Schedule},
};

/// Reads a FlashSale from a YAML file (`-` for standard input) and checks it against the same
/// schema rules the API server applies.
pub fn read(path: &Path) -> anyhow::Result<FlashSale> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let value: serde_json::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    let sale: FlashSale =
        serde_json::from_value(value).with_context(|| format!("{} is not a valid FlashSale", path.display()))?;
    if let Err(errors) = kube::core::cel::validate_cel(&sale) {
        anyhow::bail!("{} would be rejected by the API server: {errors}", path.display());
    }
    Ok(sale)
}

/// The timeline table for `sale` as seen from `now`.
pub fn render(sale: &FlashSale, now: Timestamp) -> anyhow::Result<String> {
    let schedule = Schedule::from_spec(&sale.spec)?;
    let zone_name = &sale.spec.cron_hpa_time_zone;
    let zone = TimeZone::get(zone_name).with_context(|| format!("unknown time zone {zone_name:?}"))?;
    let position = timeline::position(&schedule, sale.spec.suspend, false, now);
    let mut out = String::new();
    let name = sale.metadata.name.as_deref().unwrap_or("<unnamed>");
    writeln!(out, "FlashSale {name}: now {} ({})", now, position.phase)?;
    writeln!(out)?;
    writeln!(out, "{:<12} {:<26} {:<34} ACTIONS", "PHASE", "FROM (UTC)", format!("FROM ({zone_name})"),)?;
    let rows = [
        (Phase::Scheduled, None),
        (Phase::Preparing, Some(schedule.prepare_at)),
        (Phase::Active, Some(schedule.start)),
        (Phase::CoolingDown, Some(schedule.end)),
        (Phase::Restoring, Some(schedule.restore_at)),
    ];
    for (phase, from) in rows {
        let (utc, local) = match from {
            Some(t) => (t.to_string(), t.to_zoned(zone.clone()).strftime("%Y-%m-%d %H:%M:%S %Z").to_string()),
            None => ("-".into(), "-".into()),
        };
        let marker = if phase == position.phase { "*" } else { " " };
        writeln!(out, "{marker}{:<11} {:<26} {:<34} {}", phase, utc, local, actions(sale, phase))?;
    }
    Ok(out)
}

fn actions(sale: &FlashSale, phase: Phase) -> String {
    let n = sale.spec.workloads.len();
    match phase {
        Phase::Scheduled => format!("preflight checks for {n} workload(s)"),
        Phase::Preparing => format!("probe timings, then scale {n} workload(s) to peak"),
        Phase::Active | Phase::CoolingDown => "hold peak and every change in place".into(),
        Phase::Restoring => "restore every recorded original".into(),
        Phase::Completed | Phase::Suspended => String::new(),
    }
}
