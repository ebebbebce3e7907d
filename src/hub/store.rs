//! The models on this machine: the demo models under bodega's home and everything runnable in the
//! Hugging Face cache (GGUF files and safetensors folders), for `list`, for resolving a reference
//! without the network, and for `rm`.

use super::cache::{HfCache, Snapshot};
use super::download::io_error;
use super::error::HubError;
use super::inspect::{self, WeightsInfo};
use super::reference::RepoRef;
use super::select::{choose, gguf_models, index_shards, GgufModel, SAFETENSORS_INDEX, SAFETENSORS_SINGLE};
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How a model's weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One `.gguf` file or the parts of a split one.
    Gguf,
    /// A folder with `config.json` and `.safetensors` weights.
    Safetensors,
    /// A safetensors folder whose `config.json` has MLX's `quantization`.
    Mlx,
}

impl Format {
    /// Its name in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
            Self::Safetensors => "safetensors",
            Self::Mlx => "mlx",
        }
    }
}

/// Where a model lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A `.gguf` file under `$BODEGA_HOME/models` (the demo models).
    BodegaHome,
    /// The Hugging Face cache.
    HfCache,
}

/// One model on disk, as `list` shows it (`list --json`: docs/list-schema.json).
#[derive(Debug, Clone, Serialize)]
pub struct LocalModel {
    /// What `run` and the other commands accept for it: an alias, a path, or `ORG/NAME[:QUANT]`.
    pub id: String,
    /// `llama`, `qwen3`, ... as its files name it, when readable.
    pub architecture: Option<String>,
    /// How it is stored.
    pub format: Format,
    /// Its quantization (`Q4_K_M`) or dtype (`BF16`), when known.
    pub quant: Option<String>,
    /// Its parameter count, when known.
    pub parameters: Option<u64>,
    /// Bytes of its weight files.
    pub size_bytes: u64,
    /// The file (first part) or folder to load.
    pub path: PathBuf,
    /// Where it lives.
    pub source: Source,
    /// `ORG/NAME` for models from the Hub.
    pub repo: Option<String>,
    /// The commit of the snapshot, for models from the Hub.
    pub revision: Option<String>,
}

/// A runnable model inside one snapshot.
enum SnapshotModel {
    Gguf(GgufModel),
    /// The weight files of a safetensors model (the folder itself is the model).
    Safetensors(Vec<String>),
}

/// Every local model: the bodega home's GGUF files first, then the Hugging Face cache by repository.
pub fn list() -> Vec<LocalModel> {
    let mut models = home_models();
    for cached in HfCache::from_env().repos() {
        if RepoRef::parse(&cached.id).is_err() {
            continue;
        }
        for snapshot in cached.snapshots() {
            models.extend(snapshot_models(&snapshot).into_iter().map(|m| describe(&cached.id, &snapshot, m)));
        }
    }
    models
}

/// The cached file or folder for `reference`, searching the snapshot `refs/main` names first.
/// `Ok(None)` when it is not cached; an error when the cache holds several quants and none is the
/// default.
pub fn find(reference: &RepoRef) -> Result<Option<PathBuf>> {
    for snapshot in HfCache::from_env().repo(&reference.repo).snapshots() {
        let models = snapshot_models(&snapshot);
        if let (None, Some(SnapshotModel::Safetensors(_))) = (&reference.quant, models.first()) {
            return Ok(Some(snapshot.dir));
        }
        let ggufs: Vec<GgufModel> =
            models.into_iter().filter_map(|m| if let SnapshotModel::Gguf(g) = m { Some(g) } else { None }).collect();
        if ggufs.is_empty() {
            continue;
        }
        match choose(&reference.repo, &ggufs, reference.quant.as_deref()) {
            Ok(model) => return Ok(Some(snapshot.dir.join(&model.files[0]))),
            Err(e @ HubError::AmbiguousQuant { .. }) => return Err(e.into()),
            Err(_) => continue,
        }
    }
    Ok(None)
}

/// The `.gguf` files under `$BODEGA_HOME/models`, named by their alias when they have one.
fn home_models() -> Vec<LocalModel> {
    let dir = super::models_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let alias = super::ALIASES.iter().find(|a| dir.join(a.file) == path);
            let WeightsInfo { architecture, quant, parameters, .. } = inspect::gguf(std::slice::from_ref(&path));
            LocalModel {
                id: alias.map_or_else(|| path.display().to_string(), |a| a.name.to_string()),
                architecture,
                format: Format::Gguf,
                quant,
                parameters,
                size_bytes: std::fs::metadata(&path).map_or(0, |m| m.len()),
                path,
                source: Source::BodegaHome,
                repo: None,
                revision: None,
            }
        })
        .collect()
}

/// The complete models of a snapshot: a safetensors model first when there is one, then the GGUF ones.
fn snapshot_models(snapshot: &Snapshot) -> Vec<SnapshotModel> {
    let files = snapshot.files();
    let has = |name: &str| files.iter().any(|(f, _)| f == name);
    let safetensors = if !has("config.json") {
        None
    } else if has(SAFETENSORS_SINGLE) {
        Some(vec![SAFETENSORS_SINGLE.to_string()])
    } else if has(SAFETENSORS_INDEX) {
        std::fs::read(snapshot.dir.join(SAFETENSORS_INDEX))
            .ok()
            .and_then(|index| index_shards(&index).ok())
            .filter(|shards| shards.iter().all(|s| has(s)))
    } else {
        None
    };
    let ggufs = gguf_models(files.iter().map(|(f, size)| (f.as_str(), *size))).into_iter().map(SnapshotModel::Gguf);
    safetensors.map(SnapshotModel::Safetensors).into_iter().chain(ggufs).collect()
}

/// A snapshot's model as a listing row.
fn describe(repo: &str, snapshot: &Snapshot, model: SnapshotModel) -> LocalModel {
    let size = |files: &[String]| {
        files.iter().filter_map(|f| std::fs::metadata(snapshot.dir.join(f)).ok()).map(|m| m.len()).sum()
    };
    let paths = |files: &[String]| files.iter().map(|f| snapshot.dir.join(f)).collect::<Vec<_>>();
    let (id, format, info, size_bytes, path) = match &model {
        SnapshotModel::Gguf(g) => {
            let info = inspect::gguf(&paths(&g.files));
            let id = g.quant.as_ref().map_or_else(|| repo.to_string(), |q| format!("{repo}:{q}"));
            let info = WeightsInfo { quant: info.quant.or_else(|| g.quant.clone()), ..info };
            (id, Format::Gguf, info, size(&g.files), snapshot.dir.join(&g.files[0]))
        }
        SnapshotModel::Safetensors(weights) => {
            let info = inspect::safetensors(&paths(weights));
            let format = if info.mlx { Format::Mlx } else { Format::Safetensors };
            (repo.to_string(), format, info, size(weights), snapshot.dir.clone())
        }
    };
    LocalModel {
        id,
        architecture: info.architecture,
        format,
        quant: info.quant,
        parameters: info.parameters,
        size_bytes,
        path,
        source: Source::HfCache,
        repo: Some(repo.to_string()),
        revision: Some(snapshot.commit.clone()),
    }
}

/// What `rm` would delete, to show before asking.
#[derive(Debug, Clone)]
pub struct Removal {
    /// What is removed, in words (`org/name`, `org/name:Q4_K_M`).
    pub what: String,
    /// Files and folders to delete.
    pub paths: Vec<PathBuf>,
    /// Bytes freed.
    pub bytes: u64,
    /// The repository's `snapshots/` folder: folders left empty below it are removed too.
    snapshots: PathBuf,
}

/// Plans removing `reference` from the Hugging Face cache: the whole repository (`ORG/NAME`), or one
/// quant's files (`ORG/NAME:QUANT`) and the blobs no other file links to. Demo models and paths are
/// refused: bodega does not own them.
pub fn plan_removal(reference: &str) -> Result<Removal> {
    let as_file = Path::new(reference).exists().then(|| PathBuf::from(reference)).or_else(|| {
        let alias = super::ALIASES.iter().find(|a| a.name.eq_ignore_ascii_case(reference))?;
        Some(super::models_dir().join(alias.file))
    });
    if let Some(path) = as_file {
        return Err(HubError::NotRemovable { reference: reference.into(), path }.into());
    }
    let parsed = RepoRef::parse(reference)?;
    let cache = HfCache::from_env();
    let cached = cache.repo(&parsed.repo);
    let not_cached = || Error::from(HubError::NotInCache { reference: reference.into(), cache: cache.root().into() });
    if !cached.dir().is_dir() {
        return Err(not_cached());
    }
    let snapshots = cached.dir().join("snapshots");
    let whole = |bytes| Removal {
        what: parsed.repo.clone(),
        paths: vec![cached.dir().to_path_buf(), cached.lock_dir()],
        bytes,
        snapshots: snapshots.clone(),
    };
    let blobs_bytes = dir_size(&cached.dir().join("blobs"));
    let Some(quant) = &parsed.quant else { return Ok(whole(blobs_bytes)) };
    let mut doomed = Vec::new();
    let mut kept = Vec::new();
    for snapshot in cached.snapshots() {
        let files = snapshot.files();
        let tagged: Vec<String> = gguf_models(files.iter().map(|(f, s)| (f.as_str(), *s)))
            .into_iter()
            .filter(|m| m.quant.as_deref().is_some_and(|q| q.eq_ignore_ascii_case(quant)))
            .flat_map(|m| m.files)
            .collect();
        for (file, _) in files {
            let pointer = snapshot.dir.join(&file);
            if tagged.contains(&file) {
                doomed.push(pointer)
            } else {
                kept.push(pointer)
            }
        }
    }
    if doomed.is_empty() {
        return Err(not_cached());
    }
    if kept.is_empty() {
        return Ok(Removal { what: parsed.to_string(), ..whole(blobs_bytes) });
    }
    let kept_blobs: Vec<PathBuf> = kept.iter().filter_map(|p| cached.blob_of(p)).collect();
    let mut blobs: Vec<PathBuf> =
        doomed.iter().filter_map(|p| cached.blob_of(p)).filter(|b| !kept_blobs.contains(b)).collect();
    blobs.sort();
    blobs.dedup();
    let bytes = blobs.iter().filter_map(|b| std::fs::metadata(b).ok()).map(|m| m.len()).sum();
    Ok(Removal { what: parsed.to_string(), paths: doomed.into_iter().chain(blobs).collect(), bytes, snapshots })
}

impl Removal {
    /// Deletes the planned files and folders, then folders left empty inside the snapshots.
    pub fn apply(&self) -> Result<()> {
        for path in &self.paths {
            let result = match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
                Ok(_) => std::fs::remove_file(path),
                Err(_) => Ok(()),
            };
            result.map_err(|e| io_error(path, e))?;
            let mut parent = path.parent();
            while let Some(dir) = parent.filter(|d| d.starts_with(&self.snapshots) && *d != self.snapshots) {
                if std::fs::remove_dir(dir).is_err() {
                    break;
                }
                parent = dir.parent();
            }
        }
        Ok(())
    }
}

/// Bytes of the files directly in `dir`.
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map_or(0, |entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}
