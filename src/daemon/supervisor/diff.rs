//! Deciding a reload: from the pipelines running (their validated configs and model) and the new
//! configuration, which pipelines start, stop, restart, only change outputs, or stay as they are.
//! Pure: nothing starts here; [`crate::daemon::supervisor::Supervisor::apply`] carries the
//! [`Plan`] out.

use std::collections::BTreeMap;

use crate::daemon::config::PipelineConfig;
use crate::daemon::model::ElementModel;
use crate::daemon::output::OutputConfig;

/// What a reload does, pipeline by pipeline. Added, restarted, updated and untouched pipelines
/// are in the order of the new configuration; removed ones in name order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The model every started pipeline uses.
    pub model: ElementModel,
    /// New names: start them.
    pub added: Vec<PipelineConfig>,
    /// Names no longer configured: stop them.
    pub removed: Vec<String>,
    /// Changed pipelines (or all, with a new model): stop them, then start the new config.
    pub restarted: Vec<PipelineConfig>,
    /// Only their outputs changed: the running pipelines send their events to the new outputs.
    pub updated: Vec<PipelineConfig>,
    /// Unchanged: left alone.
    pub untouched: Vec<String>,
}

/// The plan that makes the running pipelines match `configs` with `model`: new names start,
/// missing names stop, changed pipelines (or all, with a new `model`) restart, pipelines whose
/// outputs alone changed are updated in place, the others are not touched. A renamed pipeline is
/// one removed and one added.
pub fn diff<'a>(
    running: impl IntoIterator<Item = (&'a PipelineConfig, &'a ElementModel)>,
    configs: &[PipelineConfig],
    model: &ElementModel,
) -> Plan {
    let running: BTreeMap<&str, (&PipelineConfig, &ElementModel)> = running
        .into_iter()
        .map(|(config, model)| (config.name.as_str(), (config, model)))
        .collect();
    let mut plan = Plan {
        model: model.clone(),
        added: Vec::new(),
        removed: running
            .keys()
            .filter(|name| !configs.iter().any(|c| c.name == **name))
            .map(|name| name.to_string())
            .collect(),
        restarted: Vec::new(),
        updated: Vec::new(),
        untouched: Vec::new(),
    };
    for config in configs {
        match running.get(config.name.as_str()) {
            None => plan.added.push(config.clone()),
            Some((old, old_model)) => {
                let same_but_outputs = PipelineConfig {
                    outputs: old.outputs.clone(),
                    ..config.clone()
                } == **old;
                if !same_but_outputs || *old_model != model {
                    plan.restarted.push(config.clone());
                } else if old.outputs != config.outputs {
                    plan.updated.push(config.clone());
                } else {
                    plan.untouched.push(config.name.clone());
                }
            }
        }
    }
    plan
}

impl std::fmt::Display for Plan {
    /// "added: a; removed: -; restarted: b, c; rerouted: -; untouched: d" (rerouted: only the
    /// pipeline's list of outputs changed).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
            let names: Vec<&str> = names.collect();
            if names.is_empty() {
                "-".to_string()
            } else {
                names.join(", ")
            }
        }
        let configs = |v: &'_ [PipelineConfig]| list(v.iter().map(|c| c.name.as_str()));
        write!(
            f,
            "added: {}; removed: {}; restarted: {}; rerouted: {}; untouched: {}",
            configs(&self.added),
            list(self.removed.iter().map(String::as_str)),
            configs(&self.restarted),
            configs(&self.updated),
            list(self.untouched.iter().map(String::as_str))
        )
    }
}

/// What a reload changes in the `[[output]]` tables (with `[outbox]`'s default filled in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Each changed output with what changed: `hook (max_pending 100000 -> 50)`.
    pub changed: Vec<String>,
}

/// The changes from the `old` outputs to the `new` ones, by name.
pub fn outputs(old: &[OutputConfig], new: &[OutputConfig]) -> OutputChanges {
    let find = |list: &[OutputConfig], name: &str| list.iter().position(|o| o.name() == name);
    let mut changes = OutputChanges {
        removed: old
            .iter()
            .filter(|o| find(new, o.name()).is_none())
            .map(|o| o.name().to_string())
            .collect(),
        ..OutputChanges::default()
    };
    for output in new {
        let Some(before) = find(old, output.name()).map(|i| &old[i]) else {
            changes.added.push(output.name().to_string());
            continue;
        };
        if before == output {
            continue;
        }
        let mut what = Vec::new();
        if before.kind() != output.kind() {
            what.push(format!("type {} -> {}", before.kind(), output.kind()));
        }
        if before.max_pending() != output.max_pending() {
            what.push(format!(
                "max_pending {} -> {}",
                before.max_pending(),
                output.max_pending()
            ));
        }
        let (a, b) = (before.retry(), output.retry());
        let format = crate::daemon::duration::format;
        if a != b {
            what.push(format!(
                "retry {}..{} -> {}..{}",
                format(a.initial),
                format(a.max),
                format(b.initial),
                format(b.max)
            ));
        }
        if what.is_empty() {
            what.push(format!("{} settings", output.kind()));
        }
        changes
            .changed
            .push(format!("{} ({})", output.name(), what.join(", ")));
    }
    changes
}

impl std::fmt::Display for OutputChanges {
    /// "outputs added: -; outputs removed: -; outputs changed: hook (max_pending 100000 -> 50)".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "outputs added: {}; outputs removed: {}; outputs changed: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Config;

    /// A configuration with `pipelines` (TOML `[[pipeline]]` tables), two outputs and the model
    /// folder `model`, read as the daemon reads its file.
    fn config(model: &str, pipelines: &str) -> (Vec<PipelineConfig>, ElementModel) {
        let text = format!(
            r#"
[model]
path = "{model}"

[[output]]
name = "log"
type = "jsonl"
path = "-"

[[output]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:9/hook"

{pipelines}
"#
        );
        let c = Config::parse(&text, std::path::Path::new("/etc/clipfilter/d.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let model = ElementModel {
            dir: std::path::PathBuf::from(model),
            config: c.model,
        };
        (c.pipelines, model)
    }

    /// A `[[pipeline]]` table watching `rtsp://{host}/stream`, its events to `log`.
    fn camera(name: &str, host: &str) -> String {
        format!(
            "[[pipeline]]\nname = \"{name}\"\nsource = \"rtsp://{host}/stream\"\nlabels = \"cam.toml\"\noutputs = [\"log\"]\n"
        )
    }

    fn cam1() -> String {
        camera("cam1", "10.0.0.2")
    }

    fn cam2() -> String {
        camera("cam2", "10.0.0.3")
    }

    fn names(configs: &[PipelineConfig]) -> Vec<&str> {
        configs.iter().map(|c| c.name.as_str()).collect()
    }

    fn running(
        configs: &[PipelineConfig],
        model: &ElementModel,
    ) -> Vec<(PipelineConfig, ElementModel)> {
        configs.iter().map(|c| (c.clone(), model.clone())).collect()
    }

    fn plan(
        old: &[(PipelineConfig, ElementModel)],
        new: &[PipelineConfig],
        model: &ElementModel,
    ) -> Plan {
        diff(old.iter().map(|(c, m)| (c, m)), new, model)
    }

    #[test]
    fn from_nothing_everything_is_added() {
        let (new, model) = config("/m/a", &(cam1() + &cam2()));
        let p = plan(&[], &new, &model);
        assert_eq!(names(&p.added), ["cam1", "cam2"]);
        assert!(p.removed.is_empty() && p.restarted.is_empty() && p.updated.is_empty());
        assert!(p.untouched.is_empty());
        assert_eq!(p.model, model);
        assert_eq!(
            p.to_string(),
            "added: cam1, cam2; removed: -; restarted: -; rerouted: -; untouched: -"
        );
    }

    #[test]
    fn unchanged_pipelines_are_left_alone() {
        let (old, model) = config("/m/a", &(cam1() + &cam2()));
        let (new, _) = config("/m/a", &(cam1() + &cam2()));
        let p = plan(&running(&old, &model), &new, &model);
        assert_eq!(p.untouched, ["cam1", "cam2"]);
        assert!(p.added.is_empty() && p.removed.is_empty());
        assert!(p.restarted.is_empty() && p.updated.is_empty());
    }

    #[test]
    fn added_and_removed() {
        let (old, model) = config("/m/a", &cam1());
        let (new, _) = config("/m/a", &cam2());
        let p = plan(&running(&old, &model), &new, &model);
        assert_eq!(names(&p.added), ["cam2"]);
        assert_eq!(p.removed, ["cam1"]);
        assert!(p.restarted.is_empty() && p.updated.is_empty() && p.untouched.is_empty());
    }

    #[test]
    fn a_renamed_pipeline_is_removed_and_added() {
        let (old, model) = config("/m/a", &cam1());
        let (new, _) = config("/m/a", &camera("porch", "10.0.0.2"));
        let p = plan(&running(&old, &model), &new, &model);
        assert_eq!(names(&p.added), ["porch"]);
        assert_eq!(p.removed, ["cam1"]);
        assert!(p.restarted.is_empty() && p.untouched.is_empty());
    }

    #[test]
    fn a_changed_source_restarts_that_pipeline_only() {
        let (old, model) = config("/m/a", &(cam1() + &cam2()));
        let (new, _) = config("/m/a", &(camera("cam1", "10.0.0.9") + &cam2()));
        let p = plan(&running(&old, &model), &new, &model);
        assert_eq!(names(&p.restarted), ["cam1"]);
        assert_eq!(p.restarted[0].source, new[0].source);
        assert_eq!(p.untouched, ["cam2"]);
        assert!(p.added.is_empty() && p.removed.is_empty() && p.updated.is_empty());
    }

    #[test]
    fn changed_outputs_alone_update_in_place() {
        let (old, model) = config("/m/a", &(cam1() + &cam2()));
        let cam2 = cam2().replace(r#"outputs = ["log"]"#, r#"outputs = ["log", "hook"]"#);
        let (new, _) = config("/m/a", &(cam1() + &cam2));
        let p = plan(&running(&old, &model), &new, &model);
        assert_eq!(names(&p.updated), ["cam2"]);
        assert_eq!(p.updated[0].outputs, ["log", "hook"]);
        assert_eq!(p.untouched, ["cam1"]);
        assert!(p.added.is_empty() && p.removed.is_empty() && p.restarted.is_empty());
        assert_eq!(
            p.to_string(),
            "added: -; removed: -; restarted: -; rerouted: cam2; untouched: cam1"
        );
    }

    #[test]
    fn outputs_and_more_changed_is_a_restart() {
        let (old, model) = config("/m/a", &cam1());
        let cam1 = cam1()
            .replace(r#"outputs = ["log"]"#, r#"outputs = ["hook"]"#)
            .replace("cam.toml", "porch.toml");
        let (new, _) = config("/m/a", &cam1);
        let p = plan(&running(&old, &model), &new, &model);
        assert_eq!(names(&p.restarted), ["cam1"]);
        assert!(p.updated.is_empty() && p.untouched.is_empty());
    }

    #[test]
    fn a_new_model_restarts_every_pipeline() {
        let (old, model) = config("/m/a", &(cam1() + &cam2()));
        let (new, other) = config("/m/b", &(cam1() + &cam2()));
        assert_ne!(model, other);
        let p = plan(&running(&old, &model), &new, &other);
        assert_eq!(names(&p.restarted), ["cam1", "cam2"]);
        assert_eq!(p.model, other);
        assert!(p.added.is_empty() && p.removed.is_empty());
        assert!(p.updated.is_empty() && p.untouched.is_empty());
        // With a new model, a change of outputs alone restarts too.
        let cam2 = cam2().replace(r#"outputs = ["log"]"#, r#"outputs = ["hook"]"#);
        let (new, other) = config("/m/b", &(cam1() + &cam2));
        let p = plan(&running(&old, &model), &new, &other);
        assert_eq!(names(&p.restarted), ["cam1", "cam2"]);
        assert!(p.updated.is_empty());
    }

    #[test]
    fn removed_names_come_in_name_order() {
        let (old, model) = config("/m/a", &(cam2() + &cam1()));
        let p = plan(&running(&old, &model), &[], &model);
        assert_eq!(p.removed, ["cam1", "cam2"]);
        assert_eq!(
            p.to_string(),
            "added: -; removed: cam1, cam2; restarted: -; rerouted: -; untouched: -"
        );
    }
}
