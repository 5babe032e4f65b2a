"""Alerts (chat-ops): rules over what the site knows (rules.py), each alert's state kept in the bookkeeping DB
(tracker.py, store/alerts.py), messages to Slack/Mattermost or generic JSON webhooks (messages.py, delivery.py),
the `alerts` command (cli.py); the daemon's alerts agent (agents/alerter.py) runs them."""
