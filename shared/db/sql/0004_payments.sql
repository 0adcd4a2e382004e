-- Payment-provider top-ups (shared/payments/): an order is created here, pending, before the customer
-- is sent to the provider's checkout; the provider's signed events move it forward only
-- (pending -> paid -> refunded; pending -> failed | expired). Credits and take-backs go through the
-- orders/ledger tables like every credit, with references keyed by the provider's ids.

CREATE TABLE payment_orders (
    id               text PRIMARY KEY,
    account_id       text NOT NULL,
    provider         text NOT NULL,             -- "stripe"
    session_id       text UNIQUE,               -- the provider's checkout session
    payment_id       text,                      -- the provider's payment (Stripe: payment_intent)
    package          text NOT NULL,
    credits_micro    bigint NOT NULL,
    amount           bigint NOT NULL,           -- minor units (cents)
    currency         text NOT NULL,
    status           text NOT NULL,             -- pending, paid, refunded, failed, expired
    refunded_amount  bigint NOT NULL DEFAULT 0, -- minor units refunded so far
    created          bigint NOT NULL,
    updated          bigint NOT NULL
);
CREATE INDEX payment_orders_payment ON payment_orders (payment_id);
CREATE INDEX payment_orders_account ON payment_orders (account_id, created DESC);
