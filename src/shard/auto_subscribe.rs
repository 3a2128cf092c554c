//! EMQX's auto-subscribe: the configured `[[auto_subscribe]]` filters, filled in with the
//! client's id and username, subscribed for every client once its CONNACK is out, for a new
//! session and a resumed one alike. Each is checked against the ACL like a SUBSCRIBE; a
//! refused one is logged and skipped. Their retained messages go out once every shard knows
//! the filters, as a SUBACK would wait.

use std::time::Instant;

use bytestring::ByteString;

use super::inbound::inner_filter;
use super::link::ConnLink;
use super::Shard;
use crate::auth::Action;
use crate::session::Subscription;
use crate::topic::parse_shared;

impl Shard {
    pub(super) fn auto_subscribe(
        &mut self,
        key: usize,
        link: &ConnLink,
        client_id: &str,
        username: Option<&str>,
        now: Instant,
    ) {
        if self.cfg.auto_subscribe.is_empty() {
            return;
        }
        let cfg = self.cfg.clone();
        let token = self.token();
        let mut retained = Vec::new();
        let mut new_interest = 0;
        for auto in &cfg.auto_subscribe {
            let filter = auto.filter_for(client_id, username);
            if !self.topic_within_limits(&filter) || crate::topic::validate_filter(&filter).is_err()
            {
                tracing::info!(client = %client_id, %filter, "auto-subscribe filter invalid for this client: skipped");
                continue;
            }
            let shared = parse_shared(&filter).is_some();
            if !self.authorize(link, client_id, Action::Subscribe, inner_filter(&filter)) {
                self.stats.acl_denied.inc();
                tracing::info!(client = %client_id, %filter, "auto-subscribe not authorized: skipped");
                continue;
            }
            let options = auto.options();
            let sub = Subscription { options, id: None };
            let filter = ByteString::from(filter);
            let Some((existed, first)) = self.add_subscription(key, &filter, sub, Some(token))
            else {
                return;
            };
            new_interest += usize::from(first);
            if options.wants_retained(existed) && !shared {
                retained.push((filter, options));
            }
        }
        // Like a SUBACK: the retained messages wait until the other shards know the filters.
        let waiting = self.interest_answers(new_interest);
        let pending = self
            .pending_reply(key, None, waiting)
            .with_retained(retained);
        self.complete_or_wait(token, pending, now);
    }
}
