//! Access tokens of projects (made, listed, deleted; found by hash) and the
//! lookups that keep a project's caller to its own ports.

use super::{Engine, EngineError};
use crate::auth::{NewToken, Token, TokenSpec};

/// The error for a port that does not exist (or that the caller may not
/// see: the answer is the same).
pub fn no_such_port(id: &str) -> EngineError {
    EngineError::NotFound(format!("no port with id {id:?} (see `lanyard port list`)"))
}

impl Engine {
    /// The project whose token hashes to `hash`, if any.
    pub fn token_project(&self, hash: &str) -> Result<Option<String>, EngineError> {
        let token = self.store.token_by_hash(hash)?;
        // A project's tokens go with it; a leftover is no one's.
        Ok(token.map(|t| t.project).filter(|p| self.projects.iter().any(|q| &q.name == p)))
    }

    /// Makes a token for `project`; the answer is the only place its secret
    /// ever appears.
    pub fn create_token(&mut self, project: &str, spec: TokenSpec) -> Result<NewToken, EngineError> {
        self.check_project(project)?;
        let name = spec.name.unwrap_or_default();
        crate::auth::validate_label(&name)?;
        let taken: Vec<String> = self.store.tokens()?.into_iter().map(|t| t.id).collect();
        let id = loop {
            let id = format!("{:08x}", rand::random::<u32>());
            if !taken.contains(&id) {
                break id;
            }
        };
        let secret = crate::auth::generate()?;
        let token =
            Token { id, project: project.into(), name, hash: crate::auth::hash(&secret), created: self.host.now() };
        self.store.put_token(&token)?;
        tracing::info!(project, token = token.id, "token created");
        Ok(NewToken { token, secret })
    }

    /// The tokens of `project` (never their secrets).
    pub fn tokens_of(&self, project: &str) -> Result<Vec<Token>, EngineError> {
        self.check_project(project)?;
        Ok(self.store.tokens()?.into_iter().filter(|t| t.project == project).collect())
    }

    /// Deletes token `id` of `project`.
    pub fn delete_token(&mut self, project: &str, id: &str) -> Result<(), EngineError> {
        if !self.tokens_of(project)?.iter().any(|t| t.id == id) {
            return Err(EngineError::NotFound(format!(
                "no token with id {id:?} in project {project:?} (see `lanyard project token list {project}`)"
            )));
        }
        self.store.delete_token(id)?;
        tracing::info!(project, token = id, "token deleted");
        Ok(())
    }

    /// Fails, as for a port that does not exist, unless port `id` exists
    /// and belongs to `project` (any project when None).
    pub fn check_port(&self, id: &str, project: Option<&str>) -> Result<(), EngineError> {
        match self.ports.iter().find(|p| p.id == id) {
            Some(p) if project.is_none_or(|pr| p.project == pr) => Ok(()),
            _ => Err(no_such_port(id)),
        }
    }
}
