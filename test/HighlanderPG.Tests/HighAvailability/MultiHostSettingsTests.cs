using HighlanderPG.Hosting;
using HighlanderPG.Leasing;
using Npgsql;

namespace HighlanderPG.Tests.HighAvailability;

/// <summary>Multi-host connection strings and the server-identity rule, without a server.</summary>
public sealed class MultiHostSettingsTests
{
    private const string TwoHosts = "Host=pg1,pg2:5433;Username=u;Password=s3cret-pw";

    [Theory]
    [InlineData(TwoHosts)]
    [InlineData(TwoHosts + ";Target Session Attributes=primary")]
    [InlineData(TwoHosts + ";Target Session Attributes=read-write")]
    [InlineData(TwoHosts + ";Target Session Attributes=prefer-primary")]
    [InlineData("Host=pg1;Username=u;Target Session Attributes=any")]
    public void Settings_that_reach_the_primary_are_accepted(string connectionString) =>
        Assert.Null(ConnectionSettings.Validate(connectionString));

    [Theory]
    [InlineData("any")]
    [InlineData("standby")]
    [InlineData("prefer-standby")]
    [InlineData("read-only")]
    public void Settings_that_can_keep_a_node_on_a_standby_are_refused_with_what_to_set(string target)
    {
        var error = ConnectionSettings.Validate(TwoHosts + ";Target Session Attributes=" + target);
        Assert.NotNull(error);
        Assert.Contains("Target Session Attributes=primary", error);
        Assert.DoesNotContain("s3cret-pw", error);
    }

    [Fact]
    public void Target_session_attributes_with_a_single_host_is_refused_with_what_to_list()
    {
        var error = ConnectionSettings.Validate("Host=pg1;Username=u;Target Session Attributes=primary");
        Assert.NotNull(error);
        Assert.Contains("single Host", error);
    }

    [Fact]
    public void Several_hosts_without_target_session_attributes_aim_at_the_primary_and_an_explicit_choice_is_kept()
    {
#pragma warning disable CS0618
        Assert.Equal("primary", ConnectionSettings.TargetPrimary(new NpgsqlConnectionStringBuilder(TwoHosts)).TargetSessionAttributes);
        Assert.Equal("read-write", ConnectionSettings.TargetPrimary(new NpgsqlConnectionStringBuilder(TwoHosts + ";Target Session Attributes=read-write")).TargetSessionAttributes);
        Assert.Null(ConnectionSettings.TargetPrimary(new NpgsqlConnectionStringBuilder("Host=pg1")).TargetSessionAttributes);

        // Discovery aims at the primary whatever the string says (a standby holds no lock), keeping read-write.
        Assert.Equal("any", ConnectionSettings.TargetPrimary(new NpgsqlConnectionStringBuilder(TwoHosts + ";Target Session Attributes=any")).TargetSessionAttributes);
        Assert.Equal("primary", ConnectionSettings.TargetPrimary(new NpgsqlConnectionStringBuilder(TwoHosts + ";Target Session Attributes=any"), overrideStandbyTargets: true).TargetSessionAttributes);
        Assert.Equal("primary", ConnectionSettings.TargetPrimary(new NpgsqlConnectionStringBuilder(TwoHosts + ";Target Session Attributes=prefer-standby"), overrideStandbyTargets: true).TargetSessionAttributes);
        Assert.Equal("read-write", ConnectionSettings.TargetPrimary(new NpgsqlConnectionStringBuilder(TwoHosts + ";Target Session Attributes=read-write"), overrideStandbyTargets: true).TargetSessionAttributes);
#pragma warning restore CS0618
    }

    [Fact]
    public void A_multi_host_data_source_is_described_by_every_host_and_port_without_the_password() =>
        Assert.Equal("pg1:5432,pg2:5433/u", ConnectionSettings.Describe(new NpgsqlConnectionStringBuilder(TwoHosts)));

    [Fact]
    public void The_timeline_is_read_from_a_WAL_file_name()
    {
        Assert.Equal(1, ServerIdentity.ParseTimeline("000000010000000000000003"));
        Assert.Equal(0x2A, ServerIdentity.ParseTimeline("0000002A0000000000000003"));
        Assert.Null(ServerIdentity.ParseTimeline("xyz"));
    }

    private static readonly DateTime Start = new(2026, 1, 1, 0, 0, 0, DateTimeKind.Utc);

    [Fact]
    public void The_same_server_is_no_change_and_a_first_session_has_nothing_to_compare()
    {
        var server = new ServerIdentity(7, 1, Start, "10.0.0.1:5432");
        Assert.Null(ServerIdentity.Change(null, server));
        Assert.Null(ServerIdentity.Change(server, server with { }));

        // Values one side could not read are not compared.
        Assert.Null(ServerIdentity.Change(server, server with { SystemIdentifier = null, Timeline = null }));
    }

    [Fact]
    public void A_promotion_another_cluster_another_server_and_a_restart_are_each_a_change()
    {
        var server = new ServerIdentity(7, 1, Start, "10.0.0.1:5432");

        // A promoted standby: same cluster, new timeline, its own (older) postmaster start, another address.
        var promoted = new ServerIdentity(7, 2, Start.AddHours(-1), "10.0.0.2:5432");
        Assert.Contains("timeline", ServerIdentity.Change(server, promoted));
        Assert.False(ServerIdentity.IsRestartInPlace(server, promoted));

        // Promoted behind the same address (a virtual IP, a DNS name): the timeline still tells.
        Assert.Contains("timeline", ServerIdentity.Change(server, promoted with { Address = server.Address }));

        Assert.Contains("another database cluster", ServerIdentity.Change(server, server with { SystemIdentifier = 8 }));
        Assert.Contains("another server", ServerIdentity.Change(server, server with { PostmasterStart = Start.AddMinutes(1), Address = "10.0.0.3:5432" }));

        // A restart in place is a change too (the lock-delay counts from the reconnect), logged as a restart.
        var restarted = server with { PostmasterStart = Start.AddMinutes(1) };
        Assert.Contains("restarted", ServerIdentity.Change(server, restarted));
        Assert.True(ServerIdentity.IsRestartInPlace(server, restarted));
    }
}
