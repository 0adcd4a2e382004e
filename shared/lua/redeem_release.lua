-- redeem_release: a claimed use whose credit could not be recorded goes back to its code, unless the
-- archiver's reconciler took the claim over meanwhile (then it records the use; handing it back too
-- would let a second redemption claim the same use number).
-- KEYS: the claims hash, the code's handed-back uses list (both under {redeem})
-- ARGV: the claim ("<code hash>:<use number>"), the use number
-- Returns 1 handed back, 0 the claim was no longer ours.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
