using HighlanderPG.Leasing;

namespace HighlanderPG.Tests.Leasing;

public sealed class ServerChecksTests
{
    [Fact]
    public void A_server_older_than_14_is_refused_unless_the_weaker_mode_is_chosen()
    {
        var refusal = ServerChecks.Check(130011, "13.11", inRecovery: false, serverPid: 5, connectionPid: 5, new HighlanderOptions());
        Assert.NotNull(refusal);
        Assert.Contains("idle_session_timeout", refusal);
        Assert.Contains(nameof(HighlanderOptions.AllowWithoutServerLease), refusal);

        Assert.Null(ServerChecks.Check(130011, "13.11", false, 5, 5, new HighlanderOptions { AllowWithoutServerLease = true }));
        Assert.Null(ServerChecks.Check(140000, "14.0", false, 5, 5, new HighlanderOptions()));
    }

    [Fact]
    public void A_standby_is_refused_even_in_the_weaker_mode()
    {
        var refusal = ServerChecks.Check(150018, "15.18", inRecovery: true, 5, 5, new HighlanderOptions { AllowWithoutServerLease = true, AllowSessionModePooler = true });
        Assert.NotNull(refusal);
        Assert.Contains("standby", refusal);
    }

    [Fact]
    public void A_pooler_is_refused_unless_confirmed_to_be_in_session_mode()
    {
        var refusal = ServerChecks.Check(150018, "15.18", false, serverPid: 1234, connectionPid: 98765, new HighlanderOptions());
        Assert.NotNull(refusal);
        Assert.Contains("pooler", refusal);
        Assert.Null(ServerChecks.Check(150018, "15.18", false, 1234, 98765, new HighlanderOptions { AllowSessionModePooler = true }));
    }
    [Fact]
    public void The_lock_table_must_hold_every_singleton_of_the_node_and_the_refusal_names_the_setting()
    {
        Assert.Null(ServerChecks.CheckLockCapacity(6400, maxLocksPerTransaction: 64, maxConnections: 100, maxPreparedTransactions: 0));
        var refusal = ServerChecks.CheckLockCapacity(6401, maxLocksPerTransaction: 64, maxConnections: 100, maxPreparedTransactions: 0);
        Assert.NotNull(refusal);
        Assert.Contains("max_locks_per_transaction 64 x (max_connections 100 + max_prepared_transactions 0)", refusal, StringComparison.Ordinal);
        Assert.Contains("6400 locks", refusal, StringComparison.Ordinal);
        Assert.Null(ServerChecks.CheckLockCapacity(6500, 64, 100, 2)); // prepared transactions' slots count too
        Assert.Contains("max_locks_per_transaction", ServerChecks.DescribeOutOfLocks("53200"), StringComparison.Ordinal);
        Assert.Null(ServerChecks.DescribeOutOfLocks("55P03"));
    }
}
