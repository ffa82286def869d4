//! `vws image`: the repository's image pool.

use std::path::PathBuf;

use clap::Subcommand;
use vws_model::ByteSize;

use crate::commands::upload::send;
use crate::output::{self, table};
use crate::Globals;

/// Image verbs.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import a disk image (raw or qcow2), a kernel+initrd pair, or an OCI
    /// image (a layout folder, or a docker/podman save archive) as NAME:TAG
    Import {
        /// Name and tag, e.g. minimal:1
        reference: String,
        /// A bootable disk image
        #[arg(long, conflicts_with_all = ["kernel", "initrd", "oci"], required_unless_present_any = ["kernel", "oci"])]
        disk: Option<PathBuf>,
        /// An OCI image layout folder, or a `docker save` / `podman save`
        /// archive: registered as a pull would (docs/images.md)
        #[arg(long, value_name = "PATH", conflicts_with_all = ["kernel", "initrd", "sign"])]
        oci: Option<PathBuf>,
        /// A kernel (with --initrd)
        #[arg(long, requires = "initrd")]
        kernel: Option<PathBuf>,
        /// An initrd (with --kernel)
        #[arg(long, requires = "kernel")]
        initrd: Option<PathBuf>,
        /// Kernel command line for kernel images
        #[arg(long)]
        cmdline: Option<String>,
        /// Sign the image's content id with the certificate this CLI presents
        #[arg(long)]
        sign: bool,
        /// Only its owner (and administrators) may see and use it
        /// [default: every client may]
        #[arg(long)]
        private: bool,
    },
    /// Build a root filesystem image (raw ext4) and import it as NAME:TAG:
    /// the image of dynamic-account workspaces
    #[command(
        after_help = "Examples:\n  vws image build debian:12 --from debian          # debootstrap, a few minutes\n  vws image build tiny:1 --from busybox            # seconds, from busybox-static"
    )]
    Build {
        /// Name and tag, e.g. debian:12
        reference: String,
        /// What to build it from
        #[arg(long, value_enum, default_value = "debian")]
        from: crate::commands::image_build::Base,
        /// Debian suite
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Debian mirror [default: the host's apt source]
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        /// Extra Debian packages, comma-separated
        #[arg(long, value_delimiter = ',', value_name = "PKGS")]
        include: Vec<String>,
        /// A cloud-style bootable disk instead of a root filesystem: its own
        /// bootloader (syslinux), kernel, systemd, cloud-init (reading a
        /// NoCloud seed) and openssh-server, and the vws agent as a service
        /// (docs/ec2.md); Debian only
        #[arg(long)]
        bootable: bool,
        /// The static vws agent to install in a --bootable image [default:
        /// vws-agent beside this vws, else on PATH]
        #[arg(long, value_name = "FILE", requires = "bootable")]
        agent: Option<PathBuf>,
        /// Keep the image file here [default: a temporary file, removed after import]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Sign the image's content id with the certificate this CLI presents
        #[arg(long)]
        sign: bool,
        /// Only its owner (and administrators) may see and use it
        /// [default: every client may]
        #[arg(long)]
        private: bool,
    },
    /// Pull an OCI image from a registry (REGISTRY/REPO:TAG or
    /// REGISTRY/REPO@sha256:…) into the pool, as both categories' root
    /// filesystem; its config becomes the workspaces' defaults
    #[command(
        after_help = "Credentials come from the registries file (never the command line):\n  [\"registry.example.org\"]\n  username = \"me\"\n  password = \"…\"      # or: token = \"…\"\n\nExamples:\n  vws image pull 127.0.0.1:5000/emboss:1\n  vws image pull registry.example.org/lab/tools@sha256:… --name tools:2"
    )]
    Pull(crate::commands::image_pull::PullArgs),
    /// Push a root filesystem image to a registry as an OCI image: a
    /// pulled one as its own layers, one saved from a workspace as its
    /// image's layers and what the workspace changed (docs/images.md)
    Push(crate::commands::image_pull::PushArgs),
    /// Sign an image's content id with the certificate this CLI presents
    Sign {
        /// Image reference
        reference: String,
    },
    /// List the pool
    #[command(alias = "ls")]
    List {
        /// Only images that hold this package (or busybox applet)
        #[arg(long, value_name = "PACKAGE")]
        has: Option<String>,
    },
    /// Show one image (NAME:TAG or sha256:DIGEST)
    Show {
        /// Image reference
        reference: String,
    },
    /// Remove a tag; the image goes with its last tag (or at once by digest)
    #[command(alias = "remove")]
    Rm {
        /// Image reference
        reference: String,
    },
}

/// Signs an image's content id with the CLI's key and sends the signature.
async fn sign_image(
    g: &Globals,
    client: &vws_client::Client,
    reference: &str,
) -> anyhow::Result<vws_store::ImageRecord> {
    use base64::Engine;
    let creds = crate::commands::pki::client_credentials(g)?;
    let image = client.image(reference).await?;
    let signature = creds.sign(&vws_pki::image_signing_message(&image.id))?;
    Ok(client
        .sign_image(
            &image.id,
            &creds.cert_pem,
            &base64::engine::general_purpose::STANDARD.encode(signature),
        )
        .await?)
}

/// Registers an image from uploaded blobs, signing it if asked.
async fn register(
    g: &Globals,
    client: &vws_client::Client,
    req: serde_json::Value,
    sign: bool,
) -> anyhow::Result<vws_store::ImageRecord> {
    let image = client.import_image(req).await?;
    if sign {
        return sign_image(g, client, &image.id).await;
    }
    Ok(image)
}

/// Runs an image verb.
pub async fn run(g: &Globals, c: ImageCommand) -> anyhow::Result<()> {
    let client = g.client()?;
    match c {
        ImageCommand::Import {
            reference,
            disk,
            kernel,
            initrd,
            cmdline,
            sign,
            private,
            oci,
        } => {
            let (name, tag) = reference.split_once(':').unwrap_or((&reference, "latest"));
            vws_model::ImageRef::tagged(name, tag)?;
            if let Some(path) = oci {
                let named = format!("{name}:{tag}");
                return crate::commands::image_pull::import_oci(g, &client, &named, &path, private)
                    .await;
            }
            let quiet = g.json;
            let mut req = serde_json::json!({ "name": name, "tag": tag, "cmdline": cmdline,
                "visibility": visibility(private) });
            if let Some(d) = disk {
                req["disk"] = send(&client, &d, "disk", quiet).await?.into();
            } else if let (Some(k), Some(i)) = (kernel, initrd) {
                req["kernel"] = send(&client, &k, "kernel", quiet).await?.into();
                req["initrd"] = send(&client, &i, "initrd", quiet).await?.into();
            }
            let image = register(g, &client, req, sign).await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&image)?);
            } else {
                println!("{}:{}  {}", name, tag, image.id);
            }
        }
        ImageCommand::Build {
            reference,
            from,
            suite,
            mirror,
            include,
            bootable,
            agent,
            out,
            sign,
            private,
        } => {
            let (name, tag) = reference.split_once(':').unwrap_or((&reference, "latest"));
            vws_model::ImageRef::tagged(name, tag)?;
            let scratch = tempfile::tempdir()?;
            let file = out.unwrap_or_else(|| scratch.path().join("rootfs.img"));
            let spec = crate::commands::image_build::Build {
                base: from,
                suite,
                mirror,
                include,
                bootable: bootable.then_some(crate::commands::image_build::Bootable { agent }),
                out: file.clone(),
            };
            tokio::task::spawn_blocking(move || crate::commands::image_build::build(&spec))
                .await??;
            let req = serde_json::json!({ "name": name, "tag": tag,
                "disk": send(&client, &file, "rootfs", g.json).await?,
                "visibility": visibility(private) });
            let image = register(g, &client, req, sign).await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&image)?);
            } else {
                println!(
                    "{name}:{tag}  {}  ({} root filesystem)",
                    image.id,
                    ByteSize(image.virtual_size).human()
                );
            }
        }
        ImageCommand::Pull(a) => crate::commands::image_pull::pull(g, &client, a).await?,
        ImageCommand::Push(a) => crate::commands::image_pull::push(g, &client, a).await?,
        ImageCommand::Sign { reference } => {
            let image = sign_image(g, &client, &reference).await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&image)?);
            } else {
                println!(
                    "{}  signed by {}",
                    image.id,
                    image.signer.unwrap_or_default()
                );
            }
        }
        ImageCommand::List { has } => {
            let mut images = client.images().await?;
            if let Some(p) = &has {
                images.retain(|i| i.manifest.packages.contains_key(p));
            }
            if g.json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else if images.is_empty() {
                eprintln!("the pool is empty; add an image with `vws image import`");
            } else {
                let mut t = table(&[
                    "TAGS", "ID", "KIND", "FORMAT", "VIRTUAL", "STORED", "IMPORTED",
                ]);
                for i in images {
                    t.add_row(vec![
                        if i.tags.is_empty() {
                            "<none>".into()
                        } else {
                            i.tags.join(", ")
                        },
                        i.id[..19].to_string(),
                        i.kind.as_str().into(),
                        i.format.unwrap_or_else(|| "-".into()),
                        if i.virtual_size > 0 {
                            ByteSize(i.virtual_size).human()
                        } else {
                            "-".into()
                        },
                        ByteSize(i.stored_size).human(),
                        output::relative(i.created_at),
                    ]);
                }
                println!("{t}");
            }
        }
        ImageCommand::Show { reference } => {
            let i = client.image(&reference).await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                println!("       id  {}", i.id);
                println!("     tags  {}", i.tags.join(", "));
                println!(
                    "     kind  {}{}",
                    i.kind.as_str(),
                    i.format.map(|f| format!(" ({f})")).unwrap_or_default()
                );
                if i.virtual_size > 0 {
                    println!("  virtual  {}", ByteSize(i.virtual_size).human());
                }
                for f in &i.files {
                    println!("{:>9}  {}  {}", f.role, f.digest, ByteSize(f.size).human());
                }
                if let Some(c) = &i.cmdline {
                    println!("  cmdline  {c}");
                }
                let m = &i.manifest;
                if let Some(os) = m.pretty_name.as_ref().or(m.distribution.as_ref()) {
                    println!("       os  {os}");
                }
                for (what, v) in [("arch", &m.arch), ("kernel", &m.kernel), ("libc", &m.libc)] {
                    if let Some(v) = v {
                        println!("{what:>9}  {v}");
                    }
                }
                if !m.packages.is_empty() {
                    let names: Vec<&str> = m.packages.keys().map(String::as_str).take(12).collect();
                    println!(
                        " packages  {} ({}{})",
                        m.packages.len(),
                        names.join(", "),
                        if m.packages.len() > 12 {
                            ", …; --json lists all"
                        } else {
                            ""
                        }
                    );
                }
                if let Some(n) = &m.note {
                    println!("     note  {n}");
                }
                println!("    owner  {}", i.owner);
                println!(
                    "     used  by {}",
                    match i.visibility {
                        vws_store::Visibility::Public => "every client",
                        vws_store::Visibility::Private => "its owner and administrators",
                    }
                );
                println!(" imported  {}", output::timestamp(i.created_at));
            }
        }
        ImageCommand::Rm { reference } => {
            client.remove_image(&reference).await?;
            eprintln!("removed {reference}");
        }
    }
    Ok(())
}

fn visibility(private: bool) -> &'static str {
    if private {
        "private"
    } else {
        "public"
    }
}
