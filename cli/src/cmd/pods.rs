//! Pod commands (owned by the pods work; stubs until it lands).

use clap::Args;

use crate::global::Globals;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(_g: &Globals, _a: RunArgs) -> anyhow::Result<i32> {
    anyhow::bail!("run is not implemented yet")
}

#[derive(Args, Debug)]
pub struct PrepareArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn prepare(_g: &Globals, _a: PrepareArgs) -> anyhow::Result<i32> {
    anyhow::bail!("prepare is not implemented yet")
}

#[derive(Args, Debug)]
pub struct RunPreparedArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run_prepared(_g: &Globals, _a: RunPreparedArgs) -> anyhow::Result<i32> {
    anyhow::bail!("run-prepared is not implemented yet")
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn list(_g: &Globals, _a: ListArgs) -> anyhow::Result<i32> {
    anyhow::bail!("list is not implemented yet")
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn status(_g: &Globals, _a: StatusArgs) -> anyhow::Result<i32> {
    anyhow::bail!("status is not implemented yet")
}

#[derive(Args, Debug)]
pub struct EnterArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn enter(_g: &Globals, _a: EnterArgs) -> anyhow::Result<i32> {
    anyhow::bail!("enter is not implemented yet")
}

#[derive(Args, Debug)]
pub struct StopArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn stop(_g: &Globals, _a: StopArgs) -> anyhow::Result<i32> {
    anyhow::bail!("stop is not implemented yet")
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn rm(_g: &Globals, _a: RmArgs) -> anyhow::Result<i32> {
    anyhow::bail!("rm is not implemented yet")
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn gc(_g: &Globals, _a: GcArgs) -> anyhow::Result<i32> {
    anyhow::bail!("gc is not implemented yet")
}

#[derive(Args, Debug)]
pub struct CatManifestArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn cat_manifest(_g: &Globals, _a: CatManifestArgs) -> anyhow::Result<i32> {
    anyhow::bail!("cat-manifest is not implemented yet")
}
