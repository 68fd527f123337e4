//! Who may reach what, from the flags and the config file: the server's destination policy
//! (`--allow`, `--deny`, `--allow-all`), the identity rules (`[[server.identity]]` tables, then
//! the short form `--allow-client` / `allow_clients`) and the PROXY protocol setting.
//!
//! Each `[[server.identity]]` table is checked on its own and errors name the table and the
//! key. The server's `deny` rules apply to every identity as well.

use std::collections::HashSet;

use anyhow::{Context, bail};
use streamproxy::proxy::identity::{Access, ClientMatch, IdentityRule};
use streamproxy::proxy::policy::{Policy, Rule};
use streamproxy::proxy::proxy_protocol::ProxyProtocol;

use crate::cli::ServerArgs;
use crate::config::{IdentityConfig, ServerConfig};

/// The name of the rule made of `--allow-client` matches.
pub(crate) const SHORT_FORM_NAME: &str = "allow-client";

const NO_POLICY: &str = "no destination policy: give --allow RULE (e.g. --allow 10.0.0.0/8:443, repeatable) or --allow-all to allow every destination";

/// The access rules, and how `server --check` and reloads describe them.
pub(crate) struct AccessPlan {
    pub(crate) access: Access,
    /// `key value` lines, in order.
    pub(crate) lines: Vec<(&'static str, String)>,
}

/// The server-wide rules, flags over the file.
struct ServerWide {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    /// The `--allow-client` / `allow_clients` matches.
    short: Vec<ClientMatch>,
    proxy_protocol: ProxyProtocol,
}

/// Builds the access rules from the flags (which win) and the file.
pub(crate) fn plan(args: &ServerArgs, file: &ServerConfig) -> anyhow::Result<AccessPlan> {
    let wide = server_wide(args, file)?;
    let mut lines = Vec::new();
    let policy = server_policy(args, file, &wide, &mut lines)?;
    lines.extend(wide.allow.iter().map(|r| ("allow", r.to_string())));
    lines.extend(wide.deny.iter().map(|r| ("deny", r.to_string())));
    lines.push(("proxy_protocol", wide.proxy_protocol.to_string()));

    let mut rules = table_rules(file, &wide.deny, &mut lines)?;
    if let Some(rule) = short_form_rule(wide.short, &rules, &policy, &mut lines)? {
        rules.push(rule);
    }
    lines.push(("identity", closing_line(&rules).to_owned()));
    Ok(AccessPlan {
        access: Access::new(policy)
            .identities(rules)
            .proxy_protocol(wide.proxy_protocol),
        lines,
    })
}

/// The server-wide allow and deny rules, short-form matches and PROXY protocol setting.
fn server_wide(args: &ServerArgs, file: &ServerConfig) -> anyhow::Result<ServerWide> {
    let allow = if args.allow.is_empty() {
        parse_rules(&file.allow, "allow")?
    } else {
        args.allow.clone()
    };
    let deny = if args.deny.is_empty() {
        parse_rules(&file.deny, "deny")?
    } else {
        args.deny.clone()
    };
    let short: Vec<ClientMatch> = if args.allow_client.is_empty() {
        file.allow_clients
            .iter()
            .map(|m| {
                m.parse::<ClientMatch>()
                    .with_context(|| "allow_clients in the config file".to_owned())
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        args.allow_client.clone()
    };
    let proxy_protocol = match (args.proxy_protocol, &file.proxy_protocol) {
        (Some(mode), _) => mode,
        (None, Some(text)) => text.parse().context("proxy_protocol in the config file")?,
        (None, None) => ProxyProtocol::Off,
    };
    Ok(ServerWide {
        allow,
        deny,
        short,
        proxy_protocol,
    })
}

/// The server's own destination policy; says in `lines` when it allows more than its rules.
fn server_policy(
    args: &ServerArgs,
    file: &ServerConfig,
    wide: &ServerWide,
    lines: &mut Vec<(&'static str, String)>,
) -> anyhow::Result<Policy> {
    let (allow, deny) = (&wide.allow, &wide.deny);
    let allow_all = args.allow_all || (allow.is_empty() && file.allow_all == Some(true));
    if allow_all {
        if !allow.is_empty() {
            bail!("give either allow rules or allow-all, not both");
        }
        lines.push((
            "allow",
            "every destination not denied (allow_all)".to_owned(),
        ));
        Ok(Policy::allow_all(deny.clone()))
    } else if allow.is_empty() {
        if file.identity.is_empty() || !wide.short.is_empty() {
            bail!(NO_POLICY);
        }
        // Every client needs an identity rule: the server's own policy admits nobody.
        lines.push((
            "allow",
            "only what an identity rule allows (no server-wide allow rule)".to_owned(),
        ));
        Ok(Policy::allow_all(deny.clone()))
    } else {
        Ok(Policy::new(allow.clone(), deny.clone())?)
    }
}

/// The `[[server.identity]]` tables as rules, in order, each with its `--check` line.
fn table_rules(
    file: &ServerConfig,
    server_deny: &[Rule],
    lines: &mut Vec<(&'static str, String)>,
) -> anyhow::Result<Vec<IdentityRule>> {
    let mut rules = Vec::new();
    let mut names = HashSet::new();
    for (index, table) in file.identity.iter().enumerate() {
        let (rule, line) = identity_rule(index, table, server_deny)?;
        if !names.insert(rule.name().to_owned()) {
            bail!(
                "[[server.identity]] #{}: the name `{}` is used twice; give each rule its own",
                index + 1,
                rule.name()
            );
        }
        lines.push(("identity", line));
        rules.push(rule);
    }
    Ok(rules)
}

/// The rule of `--allow-client` / `allow_clients`, if any matches are given: the server's own
/// policy for those clients.
fn short_form_rule(
    short: Vec<ClientMatch>,
    tables: &[IdentityRule],
    policy: &Policy,
    lines: &mut Vec<(&'static str, String)>,
) -> anyhow::Result<Option<IdentityRule>> {
    if short.is_empty() {
        return Ok(None);
    }
    if tables.iter().any(|rule| rule.name() == SHORT_FORM_NAME) {
        bail!(
            "[[server.identity]]: the name `{SHORT_FORM_NAME}` is the rule of --allow-client / allow_clients; name the table otherwise"
        );
    }
    lines.push((
        "identity",
        format!(
            "{SHORT_FORM_NAME}: {} -> the allow and deny rules above",
            join(&short, " ")
        ),
    ));
    Ok(Some(IdentityRule::new(
        SHORT_FORM_NAME,
        short,
        policy.clone(),
    )?))
}

/// The last `identity` line: what happens to a client no rule matches.
fn closing_line(rules: &[IdentityRule]) -> &'static str {
    if rules.is_empty() {
        "none: every client gets the rules above"
    } else {
        "a client no rule above matches is refused"
    }
}

/// One `[[server.identity]]` table as a rule, and its `--check` line.
fn identity_rule(
    index: usize,
    table: &IdentityConfig,
    server_deny: &[Rule],
) -> anyhow::Result<(IdentityRule, String)> {
    let number = index + 1;
    let name = match table.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name,
        _ => bail!(
            "[[server.identity]] #{number} has no name: give name = \"...\" (it names the rule in logs)"
        ),
    };
    let at = |key: &str| format!("[[server.identity]] `{name}`: {key}");
    let mut matches = Vec::new();
    for (kind, values) in [
        ("cn", &table.cn),
        ("dns", &table.dns),
        ("uri", &table.uri),
        ("spki", &table.spki),
    ] {
        for value in values {
            matches.push(ClientMatch::new(kind, value).with_context(|| at(kind))?);
        }
    }
    if matches.is_empty() {
        bail!(
            "{}: give at least one of cn, dns, uri or spki to say which certificates it is for",
            at("no match")
        );
    }
    let allow = parse_rules(&table.allow, "allow").with_context(|| at("allow"))?;
    let deny = parse_rules(&table.deny, "deny").with_context(|| at("deny"))?;
    if allow.is_empty() {
        bail!(
            "{}: give the destinations it may reach (allow = [\"10.0.0.0/8:22\"], or [\"*\"] for every destination)",
            at("no allow rule")
        );
    }
    let proxy_protocol = table
        .proxy_protocol
        .as_deref()
        .map(str::parse::<ProxyProtocol>)
        .transpose()
        .with_context(|| at("proxy_protocol"))?;
    let mut line = format!(
        "{name}: {} -> allow {}",
        join(&matches, " "),
        join(&allow, ", ")
    );
    if !deny.is_empty() {
        line.push_str(&format!("; deny {}", join(&deny, ", ")));
    }
    if let Some(mode) = proxy_protocol {
        line.push_str(&format!("; proxy_protocol {mode}"));
    }
    let all_deny = deny.iter().chain(server_deny).cloned();
    let policy = Policy::new(allow, all_deny).with_context(|| at("allow"))?;
    let rule = IdentityRule::new(name, matches, policy)?.proxy_protocol(proxy_protocol);
    Ok((rule, line))
}

fn join<T: std::fmt::Display>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

fn parse_rules(rules: &[String], key: &str) -> anyhow::Result<Vec<Rule>> {
    rules
        .iter()
        .map(|r| {
            r.parse::<Rule>()
                .with_context(|| format!("{key} in the config file"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use streamproxy::proxy::identity::PeerCertificate;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::config::parse;

    fn args(flags: &[&str]) -> ServerArgs {
        let mut argv = vec!["streamproxy", "server"];
        argv.extend_from_slice(flags);
        match Cli::parse_from(argv).command {
            Command::Server(args) => args,
            _ => unreachable!("a server command"),
        }
    }

    fn access(flags: &[&str], file: &str) -> anyhow::Result<AccessPlan> {
        plan(&args(flags), &parse(file).expect("valid toml").server)
    }

    fn error(flags: &[&str], file: &str) -> String {
        match access(flags, file) {
            Ok(_) => panic!("accepted: {flags:?} {file}"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn rule_for(plan: &AccessPlan, cn: &str) -> Option<String> {
        let cert = PeerCertificate::for_names(Some(cn), [], []);
        plan.access
            .admit(Some(&cert))
            .ok()
            .map(|g| g.rule().unwrap_or("(none)").to_owned())
    }

    const TABLES: &str = r#"
        [server]
        deny = ["10.0.0.1"]
        proxy_protocol = "v2"

        [[server.identity]]
        name = "ci"
        cn = "ci-runner"
        uri = ["spiffe://example.org/ci"]
        allow = ["10.0.0.0/8:22"]

        [[server.identity]]
        name = "ops"
        dns = ["ops.example.internal"]
        spki = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
        allow = ["*"]
        deny = ["192.168.0.0/16"]
        proxy_protocol = "off"
    "#;

    #[test]
    fn identity_tables_read_well_and_need_no_server_wide_allow() {
        let plan = access(&[], TABLES).expect("valid");
        let rules = plan.access.identity_rules();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].name(), "ci");
        assert_eq!(rules[0].matches().len(), 2);
        assert_eq!(rules[1].matches().len(), 2);
        assert_eq!(plan.access.default_proxy_protocol(), ProxyProtocol::V2);
        assert_eq!(rule_for(&plan, "ci-runner").as_deref(), Some("ci"));
        assert_eq!(rule_for(&plan, "laptop"), None, "deny by default");
        // The server's deny rules apply to every identity.
        let d: streamproxy::proxy::Destination = "10.0.0.1:22".parse().expect("destination");
        assert!(
            rules[0]
                .policy()
                .check(&d, &["10.0.0.1".parse().expect("ip")])
                .is_err()
        );
        let text: Vec<String> = plan.lines.iter().map(|(k, v)| format!("{k} {v}")).collect();
        assert!(
            text.contains(
                &"identity ci: cn=ci-runner uri=spiffe://example.org/ci -> allow 10.0.0.0/8:22"
                    .to_owned()
            ),
            "{text:#?}"
        );
    }

    #[test]
    fn allow_client_admits_its_matches_to_the_server_rules() {
        let plan = access(
            &["--allow", "10.0.0.0/8", "--allow-client", "cn=ci-runner"],
            "",
        )
        .expect("valid");
        assert_eq!(
            rule_for(&plan, "ci-runner").as_deref(),
            Some(SHORT_FORM_NAME)
        );
        assert_eq!(rule_for(&plan, "laptop"), None);
        let from_file = access(
            &[],
            "[server]\nallow_all = true\nallow_clients = [\"cn=ci-runner\", \"dns=a.b\"]\n",
        )
        .expect("valid");
        assert_eq!(from_file.access.identity_rules()[0].matches().len(), 2);
        // Without identity rules, everyone gets the server's rules.
        let open = access(&["--allow", "10.0.0.0/8"], "").expect("valid");
        assert_eq!(rule_for(&open, "laptop").as_deref(), Some("(none)"));
    }

    #[test]
    fn bad_identity_tables_are_errors_naming_the_table_and_key() {
        for (file, expected) in [
            (
                "[[server.identity]]\ncn = \"a\"\nallow = [\"*\"]\n",
                "[[server.identity]] #1 has no name",
            ),
            (
                "[[server.identity]]\nname = \"ci\"\nallow = [\"*\"]\n",
                "[[server.identity]] `ci`: no match",
            ),
            (
                "[[server.identity]]\nname = \"ci\"\ncn = \"a\"\n",
                "[[server.identity]] `ci`: no allow rule",
            ),
            (
                "[[server.identity]]\nname = \"ci\"\nspki = \"abc\"\nallow = [\"*\"]\n",
                "[[server.identity]] `ci`: spki: `abc` is not a SHA-256 digest",
            ),
            (
                "[[server.identity]]\nname = \"ci\"\ncn = \"a\"\nallow = [\"10.0.0.0/33\"]\n",
                "[[server.identity]] `ci`: allow",
            ),
            (
                "[[server.identity]]\nname = \"ci\"\ncn = \"a\"\nallow = [\"*\"]\nproxy_protocol = \"v1\"\n",
                "[[server.identity]] `ci`: proxy_protocol",
            ),
            (
                "[[server.identity]]\nname = \"ci\"\ncn = \"a\"\nallow = [\"*\"]\n\
                 [[server.identity]]\nname = \"ci\"\ncn = \"b\"\nallow = [\"*\"]\n",
                "[[server.identity]] #2: the name `ci` is used twice",
            ),
            (
                "[server]\nallow_all = true\nallow_clients = [\"ou=ops\"]\n",
                "allow_clients in the config file",
            ),
            (
                "[server]\nproxy_protocol = \"v3\"\n",
                "proxy_protocol in the config file",
            ),
        ] {
            let e = error(&["--allow-all"], file);
            assert!(e.starts_with(expected), "{file}\n{e}");
        }
        // The short form needs server-wide destinations.
        assert!(error(&["--allow-client", "cn=a"], "").starts_with("no destination policy"));
        let e = parse("[[server.identity]]\nname = \"ci\"\ncommon_name = \"a\"\n")
            .expect_err("unknown key");
        assert!(e.to_string().contains("unknown field `common_name`"), "{e}");
    }
}
