-- Who may manage users over the API (/api/v1/users): 'admin'; everyone else: 'user'.
ALTER TABLE users ADD COLUMN role text NOT NULL DEFAULT 'user'
    CONSTRAINT users_role_known CHECK (role IN ('user', 'admin'));
-- The last-admin check reads the active admins.
CREATE INDEX users_active_admins ON users (id) WHERE role = 'admin' AND disabled_at IS NULL;
