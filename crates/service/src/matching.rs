//! Finding the image a description asks for (paper §2: "find, configure,
//! and provide an environment best matching those requirements"). As in
//! ClassAd matchmaking: requirements first — every `sw:os` and
//! `sw:program` requirement met, the image one the owner may use and the
//! policy allows, fit for the category — then rank: hot images first
//! (they start fastest), then the newest.

use serde::Serialize;
use vws_model::software::{unmet, Manifest};
use vws_model::validate::{Path as DescPath, Seg};
use vws_model::{Category, Description, FieldError, Form, Identity, InvalidDescription};
use vws_store::{ImageKind, ImageRecord};

use crate::core::Service;
use crate::error::ServiceError;
use crate::policy::glob;

/// One image of the pool judged against a description.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    /// Its first tag, or its digest.
    pub image: String,
    /// Content id.
    pub id: String,
    /// What it holds.
    pub kind: ImageKind,
    /// Whether it meets every requirement.
    pub fits: bool,
    /// What it lacks, each at the requirement's place in the description.
    pub lacks: Vec<FieldError>,
}

/// What `POST /v1/match` answers: the candidates, best first, and the one
/// create would choose.
#[derive(Clone, Debug, Serialize)]
pub struct Match {
    /// The image create would use, if any fits.
    pub chosen: Option<String>,
    /// Why (the rule), or why none.
    pub reason: String,
    /// Every image considered, the fitting ones first in rank order.
    pub candidates: Vec<Candidate>,
}

/// How an image is named in messages and stored descriptions.
pub(crate) fn label(image: &ImageRecord) -> String {
    image
        .tags
        .first()
        .cloned()
        .unwrap_or_else(|| image.id.clone())
}

fn at(form: Form, segs: &[Seg]) -> String {
    DescPath(segs.to_vec()).render(form)
}

impl Service {
    /// What a workspace of `d`'s category runs from `image`: a root
    /// filesystem VM runs the boot image's kernel; an account, the node's
    /// (which no image brings).
    pub(crate) async fn effective_manifest(
        &self,
        d: &Description,
        image: &ImageRecord,
    ) -> Result<Manifest, ServiceError> {
        let mut m = image.manifest.clone();
        match d.category {
            Category::DynamicAccount => m.kernel = None,
            Category::Vm => {
                if self.disk_content(image).await? == Some(vws_qemu::img::Content::RootFs) {
                    m.kernel = self.boot_image().await?.and_then(|b| b.manifest.kernel);
                }
            }
        }
        Ok(m)
    }

    /// Whether a workspace of `d` could be made from `image` at all, the
    /// software requirements aside.
    async fn fit_for(
        &self,
        who: &Identity,
        d: &Description,
        image: &ImageRecord,
    ) -> Result<bool, ServiceError> {
        let limits = self.policy.limits_for(&who.dn);
        let names: Vec<&str> = std::iter::once(image.id.as_str())
            .chain(image.tags.iter().map(String::as_str))
            .collect();
        if !image.usable_by(&who.dn, who.is_admin())
            || image.tags.is_empty()
            || !limits
                .allowed_images
                .iter()
                .any(|p| names.iter().any(|n| glob(p, n)))
            || limits.require_signed_images && image.signer.is_none()
        {
            return Ok(false);
        }
        if let Some(m) = &image.machine {
            if m.ram < d.hardware.ram.min.0 || m.ram > d.hardware.ram.max.0 {
                return Ok(false);
            }
        }
        let content = self.disk_content(image).await?;
        Ok(match d.category {
            Category::DynamicAccount => content == Some(vws_qemu::img::Content::RootFs),
            Category::Vm => match content {
                Some(vws_qemu::img::Content::Unknown) => false,
                Some(vws_qemu::img::Content::RootFs) => self.boot_image().await?.is_some(),
                _ => true,
            },
        })
    }

    /// Every image the owner could use for `d`, judged, best first.
    pub(crate) async fn match_description(
        &self,
        who: &Identity,
        d: &Description,
        form: Form,
    ) -> Result<Match, ServiceError> {
        vws_model::validate::validate(d, form)?;
        let mut ranked: Vec<(ImageRecord, Vec<FieldError>)> = Vec::new();
        for image in self.store.list_images().await? {
            if !self.fit_for(who, d, &image).await? {
                continue;
            }
            let lacks = unmet(&d.software, &self.effective_manifest(d, &image).await?)
                .into_iter()
                .map(|u| FieldError {
                    path: at(form, &u.at),
                    message: u.message,
                })
                .collect();
            ranked.push((image, lacks));
        }
        // Fitting first; among them hot images, then the newest; the rest
        // by how little they lack.
        ranked.sort_by(|(a, la), (b, lb)| {
            la.len()
                .cmp(&lb.len())
                .then_with(|| (b.kind == ImageKind::Hot).cmp(&(a.kind == ImageKind::Hot)))
                .then_with(|| b.created_at.cmp(&a.created_at))
        });
        let fitting = ranked.iter().filter(|(_, l)| l.is_empty()).count();
        let chosen = ranked
            .first()
            .filter(|(_, l)| l.is_empty())
            .map(|(i, _)| label(i));
        let reason = match &chosen {
            Some(c) => format!(
                "image {c} chosen: it meets every software requirement ({fitting} of {} usable images do; rule: hot images first, then the newest)",
                ranked.len()
            ),
            None => format!(
                "no image meets every software requirement ({} usable images considered)",
                ranked.len()
            ),
        };
        Ok(Match {
            chosen,
            reason,
            candidates: ranked
                .into_iter()
                .map(|(i, lacks)| Candidate {
                    image: label(&i),
                    id: i.id.clone(),
                    kind: i.kind,
                    fits: lacks.is_empty(),
                    lacks,
                })
                .collect(),
        })
    }

    /// The image create uses when the description names none: the best
    /// candidate, and the history's account of the choice; or 422 with the
    /// nearest candidates and what each lacks.
    pub(crate) async fn choose_image(
        &self,
        who: &Identity,
        d: &Description,
        form: Form,
    ) -> Result<(ImageRecord, String), ServiceError> {
        if d.software.os.is_none() && d.software.programs.is_empty() {
            return Err(InvalidDescription::one(
                at(form, &[Seg::Key("software")]),
                "name an image (sw:image), or the software it must hold (sw:os, sw:program) for the factory to find one",
            )
            .into());
        }
        let found = self.match_description(who, d, form).await?;
        if let Some(chosen) = &found.chosen {
            let id = &found.candidates[0].id;
            let image = self
                .store
                .image(&vws_model::ImageRef::Digest(id.clone()))
                .await?
                .ok_or_else(|| {
                    ServiceError::Conflict(format!("image {chosen} was removed meanwhile"))
                })?;
            return Ok((image, found.reason));
        }
        let mut errors = vec![FieldError {
            path: at(form, &[Seg::Key("software")]),
            message: found.reason.clone(),
        }];
        for c in found.candidates.iter().take(5) {
            errors.extend(c.lacks.iter().map(|l| FieldError {
                path: l.path.clone(),
                message: format!("nearest candidate {}: {}", c.image, l.message),
            }));
        }
        Err(InvalidDescription(errors).into())
    }
}
