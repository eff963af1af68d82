"""A repository plus its manifest and state: what every command starts from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hybridiso import git
from hybridiso.errors import UserError
from hybridiso.process import CommandError
from hybridiso.manifest import MANIFEST_NAME, Agent, Manifest, RepoContext, load_manifest
from hybridiso.state import StateStore


@dataclass(frozen=True)
class Project:
    repo: git.RepoInfo
    manifest: Manifest
    manifest_path: Path
    workspace: Path
    store: StateStore

    @property
    def root(self) -> Path:
        return self.repo.main_root

    def env_path(self, agent: Agent | str) -> Path:
        name = agent if isinstance(agent, str) else agent.name
        path = (self.workspace / name).resolve()
        # names are validated, but never let a path leave the workspace (FAULTS #3)
        if path.parent != self.workspace.resolve():
            raise UserError(f"agent {name!r} would live outside the workspace {self.workspace}")
        return path


def default_workspace(main_root: Path) -> Path:
    return main_root.parent / f"{main_root.name}.agents"


def find_repo(cwd: Path) -> git.RepoInfo:
    return git.discover(cwd)


def load_project(cwd: Path, manifest_file: Path | None = None, *, manifest_optional: bool = False) -> Project:
    """The repository around ``cwd`` and its manifest.  With
    ``manifest_optional``, a repository without hybridiso.yaml gets the
    defaults (for commands that measure rather than manage, like
    ``report --compare``)."""
    repo = find_repo(cwd)
    path = manifest_file if manifest_file is not None else repo.main_root / MANIFEST_NAME
    if not path.is_absolute():
        path = (cwd / path).resolve()
    context = repo_context(repo)
    if manifest_optional and manifest_file is None and not path.exists():
        manifest = Manifest()
        check_workspace(manifest, path, context)
    else:
        manifest = load_manifest(path, context)  # the workspace is checked with the rest
    return Project(repo, manifest, path, manifest.workspace_path(context), StateStore(repo.common_dir))


def repo_context(repo: git.RepoInfo) -> RepoContext:
    """What the manifest check knows of the repository: where a relative
    workspace starts, and what a workspace must keep clear of (FAULTS #29)."""
    try:
        trees = tuple(wt.path for wt in git.worktree_list(repo.main_root))
    except CommandError:  # git cannot list them: the other checks still hold
        trees = ()
    return RepoContext(repo.main_root, repo.common_dir, default_workspace(repo.main_root), trees)


def check_workspace(manifest: Manifest, path: Path, context: RepoContext) -> None:
    """The workspace check alone, for a manifest that was not read from a file."""
    from hybridiso.manifest import Checked, ManifestError
    from hybridiso.manifest_checks import workspace_problems

    problems = workspace_problems(Checked(manifest, {}, list(range(len(manifest.agents))), set()), context)
    if problems:
        raise ManifestError(path, problems)
