//! `holdfast put | get | delete`: one request to a node, through the
//! client library.
//!
//! A context travels on the command line as unpadded URL-safe base64 of
//! its bytes: what `get` prints, `put` and `delete` take back.

use anyhow::{Context as _, Result, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Args;
use holdfast_net::client::{Client, ClientOptions, Context};

use super::Outcome;

#[derive(Debug, Args)]
pub struct Target {
    /// The node to ask.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: String,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    pub key: String,
    pub value: String,
    /// The context of the read this write follows (from `holdfast get`):
    /// the write replaces exactly the versions that read returned.
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub key: String,
    /// Print `{"siblings":[...],"context":"..."}` instead of lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub key: String,
    /// The context of the read this delete follows (from `holdfast get`).
    #[arg(long)]
    pub context: String,
    #[command(flatten)]
    pub target: Target,
}

fn connect(target: &Target) -> Result<Client> {
    Client::connect(&[target.addr.as_str()], ClientOptions::default())
        .with_context(|| format!("connecting to {}", target.addr))
}

fn parse_context(text: &str) -> Result<Context> {
    let bytes = URL_SAFE_NO_PAD.decode(text).context("the context is not base64")?;
    Context::from_bytes(&bytes).map_err(|error| anyhow!("the context is not valid: {error}"))
}

fn show_context(context: &Context) -> String {
    URL_SAFE_NO_PAD.encode(context.as_bytes())
}

pub fn put(args: PutArgs) -> Result<Outcome> {
    let context = args.context.as_deref().map(parse_context).transpose()?;
    let client = connect(&args.target)?;
    let after = client.put(args.key.as_bytes(), args.value.as_bytes(), context.as_ref())?;
    println!("context {}", show_context(&after.context));
    Ok(Outcome::Done)
}

pub fn get(args: GetArgs) -> Result<Outcome> {
    let client = connect(&args.target)?;
    let result = client.get(args.key.as_bytes())?;
    let siblings: Vec<String> =
        result.values.iter().map(|value| String::from_utf8_lossy(value).into_owned()).collect();
    if args.json {
        let json =
            serde_json::json!({ "siblings": siblings, "context": show_context(&result.context) });
        println!("{json}");
    } else {
        if siblings.is_empty() {
            println!("(not found)");
        }
        for sibling in &siblings {
            println!("value {sibling}");
        }
        println!("context {}", show_context(&result.context));
    }
    Ok(Outcome::Done)
}

pub fn delete(args: DeleteArgs) -> Result<Outcome> {
    let context = parse_context(&args.context)?;
    let client = connect(&args.target)?;
    let after = client.delete(args.key.as_bytes(), &context)?;
    println!("context {}", show_context(&after.context));
    Ok(Outcome::Done)
}
