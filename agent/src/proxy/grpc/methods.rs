//! The RPCs each listener knows, where their caller IDs and SQL sit, and what vtguard does
//! with each. An RPC not listed is refused (fail closed).

use tonic::{Code, Status};

use super::GrpcService;

/// Which caller-ID field vtguard writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// No caller IDs in this request (StreamHealth, GetSchema).
    None,
    /// vttablet: `immediate_caller_id` (field 2) := the proven identity.
    ImmediateCaller,
    /// vtgate: `caller_id` (field 1): principal and groups := the proven identity.
    EffectiveCaller,
}

/// Where SQL sits in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sql {
    /// A `query.BoundQuery` (its `sql` is field 1).
    Bound(u32),
    /// A repeated `query.BoundQuery`.
    BoundList(u32),
    /// A string or repeated string of SQL.
    Text(u32),
    /// A string naming a message table, which the RPC writes (MessageStream: WRITER).
    MessageTable(u32),
}

/// One known RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub name: &'static str,
    pub rewrite: Rewrite,
    /// Field of the effective caller ID (vtrpc.CallerID), if the request has one.
    pub effective: Option<u32>,
    /// Field of the target (query.Target), if any.
    pub target: Option<u32>,
    pub sql: &'static [Sql],
}

const fn tablet(name: &'static str, sql: &'static [Sql]) -> Method {
    Method {
        name,
        rewrite: Rewrite::ImmediateCaller,
        effective: Some(1),
        target: Some(3),
        sql,
    }
}

const fn vtgate(name: &'static str, sql: &'static [Sql]) -> Method {
    Method {
        name,
        rewrite: Rewrite::EffectiveCaller,
        effective: Some(1),
        target: None,
        sql,
    }
}

/// `/queryservice.Query/*`: every request but StreamHealth and GetSchema starts with
/// effective_caller_id = 1, immediate_caller_id = 2, target = 3.
pub const QUERYSERVICE: &[Method] = &[
    tablet("Execute", &[Sql::Bound(4)]),
    tablet("StreamExecute", &[Sql::Bound(4)]),
    tablet("Begin", &[]),
    tablet("Commit", &[]),
    tablet("Rollback", &[]),
    tablet("Prepare", &[]),
    tablet("CommitPrepared", &[]),
    tablet("RollbackPrepared", &[]),
    tablet("CreateTransaction", &[]),
    tablet("StartCommit", &[]),
    tablet("SetRollback", &[]),
    tablet("ConcludeTransaction", &[]),
    tablet("ReadTransaction", &[]),
    tablet("UnresolvedTransactions", &[]),
    tablet("BeginExecute", &[Sql::Bound(4), Sql::Text(6), Sql::Text(7)]),
    // BeginStreamExecuteRequest numbers pre_queries 6 and reserved_id 7, the other way round
    // from BeginExecuteRequest; string fields 6 and 7 are both read, so that neither
    // numbering lets pre-queries through unchecked (an integer field holds no strings).
    tablet(
        "BeginStreamExecute",
        &[Sql::Bound(4), Sql::Text(6), Sql::Text(7)],
    ),
    tablet("MessageStream", &[Sql::MessageTable(4)]),
    tablet("MessageAck", &[]),
    tablet("ReserveExecute", &[Sql::Bound(4), Sql::Text(7)]),
    tablet(
        "ReserveBeginExecute",
        &[Sql::Bound(4), Sql::Text(6), Sql::Text(7)],
    ),
    tablet("ReserveStreamExecute", &[Sql::Bound(4), Sql::Text(7)]),
    tablet(
        "ReserveBeginStreamExecute",
        &[Sql::Bound(4), Sql::Text(6), Sql::Text(7)],
    ),
    tablet("Release", &[]),
    tablet("VStream", &[]),
    tablet("VStreamRows", &[]),
    tablet("VStreamTables", &[]),
    tablet("VStreamResults", &[]),
    Method {
        name: "StreamHealth",
        rewrite: Rewrite::None,
        effective: None,
        target: None,
        sql: &[],
    },
    Method {
        name: "GetSchema",
        rewrite: Rewrite::None,
        effective: None,
        target: Some(1),
        sql: &[],
    },
];

/// `/vtgateservice.Vitess/*`: requests carry only the effective caller ID, as field 1.
pub const VTGATESERVICE: &[Method] = &[
    vtgate("Execute", &[Sql::Bound(3)]),
    vtgate("ExecuteMulti", &[Sql::Text(2)]),
    vtgate("ExecuteBatch", &[Sql::BoundList(3)]),
    vtgate("StreamExecute", &[Sql::Bound(2)]),
    vtgate("StreamExecuteMulti", &[Sql::Text(2)]),
    vtgate("VStream", &[]),
    vtgate("Prepare", &[Sql::Bound(3)]),
    vtgate("CloseSession", &[]),
];

/// What a request path leads to.
#[derive(Debug, Clone)]
pub enum Route {
    /// A query RPC: inspected and rewritten.
    Query(&'static Method),
    /// A non-query service this listener may open to named identities (forwarded unchanged).
    Other { service: String },
    /// Refused, with the status the caller gets.
    Refused(Status),
}

/// Routes `path` (`/package.Service/Method`) for a listener in front of `service`.
pub fn route(service: GrpcService, path: &str, other_services: &[&str]) -> Route {
    let Some((svc, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Route::Refused(Status::new(
            Code::Unimplemented,
            format!("vtguard: {path:?} is not a gRPC method path"),
        ));
    };
    let (query_service, table) = match service {
        GrpcService::Vttablet => ("queryservice.Query", QUERYSERVICE),
        GrpcService::Vtgate => ("vtgateservice.Vitess", VTGATESERVICE),
    };
    if svc == query_service {
        return match table.iter().find(|m| m.name == method) {
            Some(m) => Route::Query(m),
            None => Route::Refused(Status::new(
                Code::Unimplemented,
                format!(
                    "vtguard: {svc}/{method} is not a method this listener knows, so it is refused"
                ),
            )),
        };
    }
    if service == GrpcService::Vttablet && other_services.contains(&svc) {
        return Route::Other {
            service: svc.to_owned(),
        };
    }
    Route::Refused(Status::new(
        Code::PermissionDenied,
        format!(
            "vtguard: service {svc} is not served by this {} listener",
            service.as_str()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::grpc::VTTABLET_OTHER_SERVICES;

    #[test]
    fn routes() {
        let r = |s, p| route(s, p, &VTTABLET_OTHER_SERVICES);
        assert!(
            matches!(r(GrpcService::Vttablet, "/queryservice.Query/Execute"), Route::Query(m) if m.sql == [Sql::Bound(4)])
        );
        assert!(
            matches!(r(GrpcService::Vttablet, "/queryservice.Query/StreamHealth"), Route::Query(m) if m.rewrite == Rewrite::None)
        );
        assert!(
            matches!(r(GrpcService::Vtgate, "/vtgateservice.Vitess/ExecuteBatch"), Route::Query(m) if m.rewrite == Rewrite::EffectiveCaller)
        );
        assert!(matches!(
            r(
                GrpcService::Vttablet,
                "/tabletmanagerservice.TabletManager/ExecuteFetchAsDba"
            ),
            Route::Other { service } if service == "tabletmanagerservice.TabletManager"
        ));
        let Route::Refused(status) = r(GrpcService::Vttablet, "/queryservice.Query/Nope") else {
            panic!("unknown method must be refused")
        };
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(status
            .message()
            .contains("queryservice.Query/Nope is not a method this listener knows"));
        let Route::Refused(status) = r(GrpcService::Vtgate, "/queryservice.Query/Execute") else {
            panic!("vttablet service on a vtgate listener must be refused")
        };
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(matches!(
            r(
                GrpcService::Vtgate,
                "/tabletmanagerservice.TabletManager/Ping"
            ),
            Route::Refused(_)
        ));
        assert!(matches!(
            r(GrpcService::Vttablet, "/grpc.health.v1.Health/Check"),
            Route::Refused(_)
        ));
        assert!(matches!(
            r(GrpcService::Vttablet, "garbage"),
            Route::Refused(_)
        ));
    }

    #[test]
    fn every_vitess_queryservice_method_is_known() {
        // The list in docs/VITESS.md §2.
        let vitess = "Execute, StreamExecute, Begin, Commit, Rollback, Prepare, CommitPrepared, RollbackPrepared, CreateTransaction, StartCommit, SetRollback, ConcludeTransaction, ReadTransaction, UnresolvedTransactions, BeginExecute, BeginStreamExecute, MessageStream, MessageAck, ReserveExecute, ReserveBeginExecute, ReserveStreamExecute, ReserveBeginStreamExecute, Release, StreamHealth, VStream, VStreamRows, VStreamTables, VStreamResults, GetSchema";
        for m in vitess.split(", ") {
            assert!(QUERYSERVICE.iter().any(|x| x.name == m), "{m}");
        }
        assert_eq!(QUERYSERVICE.len(), vitess.split(", ").count());
        for m in "Execute, ExecuteMulti, ExecuteBatch, StreamExecute, StreamExecuteMulti, VStream, Prepare, CloseSession".split(", ") {
            assert!(VTGATESERVICE.iter().any(|x| x.name == m), "{m}");
        }
    }
}
