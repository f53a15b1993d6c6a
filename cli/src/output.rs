//! Human output (tables) and `--output json` for read commands.

use berth_api::rest::{Site, Worker};
use comfy_table::{presets::NOTHING, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("API types serialize")
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    t
}

fn ready_count(s: &Site) -> usize {
    s.instance_states
        .iter()
        .filter(|i| i.state == "ready")
        .count()
}

pub fn sites_table(sites: &[Site]) -> String {
    let mut t = table(&["NAME", "INSTANCES", "READY", "URL", "IMAGE"]);
    for s in sites {
        t.add_row(vec![
            s.name.clone(),
            s.instances.to_string(),
            ready_count(s).to_string(),
            s.url.clone(),
            s.image.clone(),
        ]);
    }
    t.to_string()
}

pub fn site_details(s: &Site) -> String {
    let mut out = format!(
        "name:       {}\nurl:        {}\nhostname:   {}\nimage:      {}\npinned:     {}\nport:       {}\ninstances:  {} wanted, {} ready\ncreated:    {}\n",
        s.name,
        s.url,
        s.hostname,
        s.image,
        s.image_digest,
        s.port,
        s.instances,
        ready_count(s),
        s.created_at
    );
    if s.local_cache {
        out.push_str(
            "/home:      local cache (copied to the worker at each start; writes stay local)\n",
        );
    }
    if !s.env.is_empty() {
        out.push_str("env:\n");
        for (k, v) in &s.env {
            out.push_str(&format!("  {k}={v}\n"));
        }
    }
    if !s.instance_states.is_empty() {
        let mut t = table(&["INSTANCE", "WORKER", "STATE", "MESSAGE"]);
        for i in &s.instance_states {
            t.add_row(vec![
                i.id.clone(),
                i.worker.clone(),
                i.state.clone(),
                i.message.clone(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.to_string());
        out.push('\n');
    }
    out
}

pub fn workers_table(ws: &[Worker]) -> String {
    let mut t = table(&["NAME", "ID", "INGRESS", "UP", "INSTANCES", "CAPACITY"]);
    for w in ws {
        t.add_row(vec![
            w.name.clone(),
            w.id.clone(),
            w.ingress_addr.clone(),
            if w.up { "yes" } else { "no" }.to_string(),
            w.instances.to_string(),
            w.capacity_instances.to_string(),
        ]);
    }
    t.to_string()
}
