//! Routing (pipeline stage 5): host + method + path template → route.
//!
//! Templates are compiled into a segment trie per host. Static segments win over parameters
//! (`/v1/accounts/summary` beats `/v1/accounts/{account_id}`), and a route whose shape and
//! methods collide with another is refused when the trie is built, so a request never matches
//! two routes. Reads nothing; the router layer writes the [`RouteMatch`] request extension.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use super::upstream::Route;

/// Why no route was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Nothing matches the host and path.
    #[error("no route matches")]
    NotFound,
    /// The path matches, the method does not.
    #[error("method not allowed (allow: {allow})")]
    MethodNotAllowed {
        /// The methods this path accepts, comma separated.
        allow: String,
    },
}

/// The route chosen for a request and the values of its path parameters.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The matched route.
    pub route: Arc<Route>,
    /// Path parameters in template order: (name, raw value).
    pub params: Vec<(Arc<str>, String)>,
}

impl RouteMatch {
    /// The value of the path parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed path template segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal this text.
    Static(String),
    /// Captures one non-empty segment under this name.
    Param(String),
}

/// Parses `/v1/accounts/{account_id}` into segments.
///
/// # Errors
/// Returns a message naming what is wrong with the template.
pub fn parse_template(t: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = t.strip_prefix('/') else {
        return Err(format!("path `{t}` must start with `/`"));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for seg in rest.split('/') {
        if seg.is_empty() {
            return Err(format!(
                "path `{t}` has an empty segment (`//` or a trailing `/`)"
            ));
        }
        if let Some(inner) = seg.strip_prefix('{') {
            let Some(name) = inner.strip_suffix('}') else {
                return Err(format!(
                    "segment `{seg}` opens `{{` without closing it; a parameter is a whole segment like `{{account_id}}`"
                ));
            };
            if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                return Err(format!(
                    "parameter name `{name}` must be letters, digits and `_`"
                ));
            }
            if names.contains(&name) {
                return Err(format!("parameter `{name}` appears twice in `{t}`"));
            }
            names.push(name);
            out.push(Segment::Param(name.to_owned()));
        } else {
            if seg.contains(['{', '}']) {
                return Err(format!(
                    "segment `{seg}` mixes text and a parameter; a parameter must be a whole segment"
                ));
            }
            if seg == "." || seg == ".." {
                return Err(format!("path `{t}` contains a `{seg}` segment"));
            }
            if !seg
                .bytes()
                .all(|c| c.is_ascii_graphic() && c != b'?' && c != b'#')
            {
                return Err(format!(
                    "segment `{seg}` contains a character that is not allowed in a path"
                ));
            }
            out.push(Segment::Static(seg.to_owned()));
        }
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by segment; binary search beats hashing for the handful of children a node has.
    statics: Vec<(Box<str>, Node)>,
    param: Option<Box<Node>>,
    endpoint: Option<Endpoint>,
}

/// The parameter names of one route, in template order.
type ParamNames = Arc<[Arc<str>]>;

#[derive(Debug, Default)]
struct Endpoint {
    routes: Vec<(Method, Arc<Route>, ParamNames)>,
    allow: String,
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    hosts: HashMap<Box<str>, Node>,
    any_host: Node,
}

impl Router {
    /// Adds `route` for `host` (None = any host) under `template` for `methods`.
    ///
    /// # Errors
    /// Returns the name of the route already serving the same host, shape and a shared method.
    pub fn insert(
        &mut self,
        host: Option<&str>,
        template: &[Segment],
        methods: &[Method],
        route: Arc<Route>,
    ) -> Result<(), String> {
        let mut node = match host {
            Some(h) => self.hosts.entry(h.to_ascii_lowercase().into()).or_default(),
            None => &mut self.any_host,
        };
        let mut names = Vec::new();
        for seg in template {
            node = match seg {
                Segment::Static(s) => {
                    let i = match node
                        .statics
                        .binary_search_by(|(k, _)| (**k).cmp(s.as_str()))
                    {
                        Ok(i) => i,
                        Err(i) => {
                            node.statics.insert(i, (s.as_str().into(), Node::default()));
                            i
                        }
                    };
                    &mut node.statics[i].1
                }
                Segment::Param(p) => {
                    names.push(Arc::<str>::from(p.as_str()));
                    node.param.get_or_insert_with(Box::default)
                }
            };
        }
        let endpoint = node.endpoint.get_or_insert_with(Endpoint::default);
        for m in methods {
            if let Some((_, other, _)) = endpoint.routes.iter().find(|(em, _, _)| em == m) {
                return Err(other.name.to_string());
            }
        }
        let names: Arc<[Arc<str>]> = names.into();
        for m in methods {
            endpoint
                .routes
                .push((m.clone(), route.clone(), names.clone()));
        }
        let mut allow: Vec<&str> = endpoint.routes.iter().map(|(m, _, _)| m.as_str()).collect();
        allow.sort_unstable();
        allow.dedup();
        endpoint.allow = allow.join(", ");
        Ok(())
    }

    /// Finds the route for `host` (any case, port ignored), `method` and `path`.
    ///
    /// # Errors
    /// [`RouteError::NotFound`] or [`RouteError::MethodNotAllowed`] with the `Allow` value.
    pub fn find(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
    ) -> Result<RouteMatch, RouteError> {
        let path = path.strip_prefix('/').ok_or(RouteError::NotFound)?;
        let mut first_path_match: Option<&Endpoint> = None;
        // Parameter values met on the way down, on the stack for up to 8 parameters.
        let mut values: Values<'_> = Values::new();
        // Most configs have no host-specific routes: no hashing then. Hosts are stored in
        // lower case; only a host with upper-case letters pays for a lowered copy.
        if !self.hosts.is_empty()
            && let Some(h) = host.map(strip_port)
            && let Some(node) = if h.bytes().any(|b| b.is_ascii_uppercase()) {
                self.hosts.get(h.to_ascii_lowercase().as_str())
            } else {
                self.hosts.get(h)
            }
            && let Some(found) = search(node, path, method, &mut values, &mut first_path_match)
        {
            return Ok(found);
        }
        values.clear();
        if let Some(found) = search(
            &self.any_host,
            path,
            method,
            &mut values,
            &mut first_path_match,
        ) {
            return Ok(found);
        }
        match first_path_match {
            Some(ep) => Err(RouteError::MethodNotAllowed {
                allow: ep.allow.clone(),
            }),
            None => Err(RouteError::NotFound),
        }
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The parameter values of the route being matched.
type Values<'a> = smallvec::SmallVec<[&'a str; 8]>;

fn search<'a>(
    node: &'a Node,
    rest: &'a str,
    method: &Method,
    values: &mut Values<'a>,
    first: &mut Option<&'a Endpoint>,
) -> Option<RouteMatch> {
    // An empty remainder means the whole path was consumed (the root path is `/`).
    if rest.is_empty() {
        let ep = node.endpoint.as_ref()?;
        if let Some((_, route, names)) = ep.routes.iter().find(|(m, _, _)| m == method) {
            let params = names
                .iter()
                .cloned()
                .zip(values.iter().map(|v| (*v).to_owned()))
                .collect();
            return Some(RouteMatch {
                route: route.clone(),
                params,
            });
        }
        first.get_or_insert(ep);
        return None;
    }
    // A byte scan beats the generic char searcher on segments this short.
    let (seg, tail, last) = match rest.bytes().position(|b| b == b'/') {
        Some(i) => (&rest[..i], &rest[i + 1..], false),
        None => (rest, "", true),
    };
    // `/a/` leaves an empty final segment, which matches nothing.
    if seg.is_empty() || (!last && tail.is_empty()) {
        return None;
    }
    if let Ok(i) = node.statics.binary_search_by(|(k, _)| (**k).cmp(seg))
        && let Some((_, child)) = node.statics.get(i)
        && let Some(m) = search(child, tail, method, values, first)
    {
        return Some(m);
    }
    if let Some(child) = node.param.as_deref() {
        values.push(seg);
        if let Some(m) = search(child, tail, method, values, first) {
            return Some(m);
        }
        values.pop();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream::Route;

    fn route(name: &str) -> Arc<Route> {
        Arc::new(Route::for_tests(name))
    }

    fn router(specs: &[(&str, Option<&str>, &str, &[Method])]) -> Router {
        let mut r = Router::default();
        for (name, host, path, methods) in specs {
            r.insert(*host, &parse_template(path).unwrap(), methods, route(name))
                .unwrap();
        }
        r
    }

    #[test]
    fn static_wins_and_params_are_captured() {
        let r = router(&[
            ("acct", None, "/v1/accounts/{account_id}", &[Method::GET]),
            ("summary", None, "/v1/accounts/summary", &[Method::GET]),
            (
                "tx",
                None,
                "/v1/accounts/{account_id}/transactions",
                &[Method::GET],
            ),
        ]);
        let m = r.find(None, &Method::GET, "/v1/accounts/acc-100").unwrap();
        assert_eq!(&*m.route.name, "acct");
        assert_eq!(m.param("account_id"), Some("acc-100"));
        assert_eq!(
            &*r.find(None, &Method::GET, "/v1/accounts/summary")
                .unwrap()
                .route
                .name,
            "summary"
        );
        let m = r
            .find(None, &Method::GET, "/v1/accounts/acc-1/transactions")
            .unwrap();
        assert_eq!(
            (&*m.route.name, m.param("account_id")),
            ("tx", Some("acc-1"))
        );
        assert_eq!(
            r.find(None, &Method::GET, "/v1/accounts/").unwrap_err(),
            RouteError::NotFound
        );
        assert_eq!(
            r.find(None, &Method::GET, "/v1/accounts//transactions")
                .unwrap_err(),
            RouteError::NotFound
        );
        assert_eq!(
            r.find(None, &Method::GET, "/v1/other").unwrap_err(),
            RouteError::NotFound
        );
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let r = router(&[
            ("get", None, "/v1/payments/{id}", &[Method::GET]),
            ("post", None, "/v1/payments", &[Method::POST]),
        ]);
        assert_eq!(
            r.find(None, &Method::DELETE, "/v1/payments/p1")
                .unwrap_err(),
            RouteError::MethodNotAllowed {
                allow: "GET".into()
            }
        );
    }

    #[test]
    fn backtracks_to_a_parameter_that_has_the_method() {
        let r = router(&[
            ("special", None, "/v1/accounts/special", &[Method::GET]),
            ("update", None, "/v1/accounts/{id}", &[Method::POST]),
        ]);
        assert_eq!(
            &*r.find(None, &Method::POST, "/v1/accounts/special")
                .unwrap()
                .route
                .name,
            "update"
        );
    }

    #[test]
    fn hosts_are_matched_first_then_any_host() {
        let r = router(&[
            (
                "internal",
                Some("Internal.Example"),
                "/v1/x",
                &[Method::GET],
            ),
            ("public", None, "/v1/x", &[Method::GET]),
        ]);
        assert_eq!(
            &*r.find(Some("internal.example:8443"), &Method::GET, "/v1/x")
                .unwrap()
                .route
                .name,
            "internal"
        );
        assert_eq!(
            &*r.find(Some("other"), &Method::GET, "/v1/x")
                .unwrap()
                .route
                .name,
            "public"
        );
    }

    #[test]
    fn same_shape_and_method_is_refused() {
        let mut r = router(&[("a", None, "/v1/{x}/y", &[Method::GET])]);
        let err = r.insert(
            None,
            &parse_template("/v1/{z}/y").unwrap(),
            &[Method::GET, Method::POST],
            route("b"),
        );
        assert_eq!(err.unwrap_err(), "a");
        assert!(
            r.insert(
                None,
                &parse_template("/v1/{z}/y").unwrap(),
                &[Method::POST],
                route("c")
            )
            .is_ok()
        );
    }

    #[test]
    fn templates_are_checked() {
        assert!(parse_template("v1/x").is_err());
        assert!(parse_template("/v1//x").is_err());
        assert!(parse_template("/v1/{a}/{a}").is_err());
        assert!(parse_template("/v1/acc-{id}").is_err());
        assert!(parse_template("/v1/{id").is_err());
        assert!(parse_template("/v1/../x").is_err());
        assert_eq!(parse_template("/").unwrap(), vec![]);
    }
}
