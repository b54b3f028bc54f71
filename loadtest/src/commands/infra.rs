//! `infra`: the SNS/SQS resources of terraform/ and the ledger's table, created on or deleted from an
//! emulator endpoint (moto, LocalStack).

use anyhow::Context as _;

use crate::cli::{InfraAction, InfraArgs};

/// Creates (printing the env lines to copy) or deletes the resources named by `args`.
pub async fn infra(args: InfraArgs) -> anyhow::Result<()> {
    let (target, up) = match args.action {
        InfraAction::Up(target) => (target, true),
        InfraAction::Down(target) => (target, false),
    };
    let sdk = bus::aws::config_for_emulator(&target.endpoint).await;
    let spec = bus::aws::provision::ProvisionSpec {
        max_receive_count: target.max_receive_count,
        visibility_timeout: target.visibility_timeout,
        ..bus::aws::provision::ProvisionSpec::named(&target.name)
    };
    // The ledger's table, named like Terraform's (`{name}-orders`).
    let table = format!("{}-orders", target.name);
    if up {
        let created = bus::aws::provision::provision(&sdk, &spec).await.context("provisioning")?;
        ledger::dynamodb::create_table(&sdk, &table).await.context("creating the ledger table")?;
        print!("{}", created.env_lines());
        println!("ORDERS_TABLE={table}");
    } else {
        for deleted in bus::aws::provision::teardown(&sdk, &spec).await.context("tearing down")? {
            println!("deleted {deleted}");
        }
        if ledger::dynamodb::delete_table(&sdk, &table).await.context("deleting the ledger table")? {
            println!("deleted {table}");
        }
    }
    Ok(())
}
