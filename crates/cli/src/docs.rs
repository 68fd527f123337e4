//! Documentation generated from the command-line model: shell completions and man pages.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

/// Writes the completion script for `shell` to stdout.
pub(crate) fn completions(shell: clap_complete::Shell) {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "streamproxy", &mut std::io::stdout());
}

/// Writes `streamproxy.1` and `streamproxy-SUBCOMMAND.1` for every visible subcommand into `out`.
pub(crate) fn man_pages(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let command = Cli::command();
    write_page(out, "streamproxy", command.clone())?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("streamproxy-{}", sub.get_name());
        let sub = sub.clone().name(name.clone());
        write_page(out, &name, sub)?;
    }
    Ok(())
}

fn write_page(out: &Path, name: &str, command: clap::Command) -> anyhow::Result<()> {
    let path = out.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut page)
        .with_context(|| format!("cannot render {name}.1"))?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))
}
