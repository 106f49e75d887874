"""Lone-worker alarms: tables, pure rules, device-message intake, the lifecycle, visits, the clock, the
outbox, voice memos, the control room's reads and routes (see ``alarms.service``)."""
