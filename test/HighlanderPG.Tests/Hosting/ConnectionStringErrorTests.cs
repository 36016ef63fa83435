using HighlanderPG.Hosting;

namespace HighlanderPG.Tests.Hosting;

/// <summary>A connection string Npgsql refuses is explained by keyword, never by quoting the string (it may hold a password).</summary>
public sealed class ConnectionStringErrorTests
{
    [Theory]
    [InlineData("Host=db;Password=pw-secret-1;Bogus=1", "cannot be parsed: it has a keyword Npgsql does not know")]
    [InlineData("Host=db;Password=pw-secret-1;Passwrod=pw-secret-1", "cannot be parsed: unknown keyword 'passwrod' (did you mean Password?)")]
    [InlineData("Host=db;Usrname=app;Password=pw-secret-1", "cannot be parsed: unknown keyword 'usrname' (did you mean Username?)")]
    [InlineData("Host=db;Password=pw-secret-1;Timeout=soon", "cannot be parsed: the value of 'timeout' is not valid")]
    [InlineData("Host=db;Password=pw-secret-1;Port=abc-pw-secret-1", "cannot be parsed: the value of 'port' is not valid")]
    [InlineData("Host=db;Password=pw-secret-1;Port=99999999999", "cannot be parsed: the value of 'port' is out of range")]
    [InlineData("Host=db;Password=pw-secret-1;Pooling=maybe", "cannot be parsed: the value of 'pooling' is not valid")]
    [InlineData("Host=db;Password=pw-secret-1;SSL Mode=weird", "cannot be parsed: the value of 'ssl mode' is not valid")]
    [InlineData("Host=db;Password", "cannot be parsed: it is not a list of Keyword=Value pairs separated by ';' (malformed from character 9)")]
    [InlineData("pw-secret-1", "cannot be parsed: it is not a list of Keyword=Value pairs separated by ';' (malformed from character 1)")]
    public void A_refused_connection_string_is_explained_by_keyword_without_its_values(string connectionString, string expected)
    {
        var problem = ConnectionSettings.Validate(connectionString);

        Assert.NotNull(problem);
        Assert.Contains(expected, problem, StringComparison.Ordinal);
        Assert.DoesNotContain("pw-secret-1", problem, StringComparison.Ordinal);
    }

    /// <summary>
    /// A password holding an unquoted ';' splits into a "keyword" the builder does not know, and a missing ';' makes the
    /// next pair part of the host: neither fragment is repeated, each is refused at start with what to fix.
    /// </summary>
    [Theory]
    [InlineData("Host=db;Password=pw;secret-1=x", "it has a keyword Npgsql does not know (not repeated here")]
    [InlineData("Host=db Password=pw-secret-1;Username=app", "cannot be used: its Host holds a space or '='")]
    [InlineData("Host=db,db2 Password=pw-secret-1;Username=app", "cannot be used: its Host holds a space or '='")]
    [InlineData("Host=db;Port=70000;Password=pw-secret-1", "cannot be used: the value of 'port' is out of range (1-65535)")]
    [InlineData("Host=db;Port=0;Password=pw-secret-1", "the value of 'port' is out of range")]
    public void A_password_fragment_in_a_keyword_or_a_host_is_never_repeated(string connectionString, string expected)
    {
        var problem = ConnectionSettings.Validate(connectionString);

        Assert.NotNull(problem);
        Assert.Contains(expected, problem, StringComparison.Ordinal);
        Assert.DoesNotContain("secret-1", problem, StringComparison.Ordinal);
        if (problem.Contains("cannot be used", StringComparison.Ordinal))
        {
            // It parses (the builder takes such a host or port): what a node would log of it shows no part of it either.
            Assert.DoesNotContain("secret-1", ConnectionSettings.Describe(new Npgsql.NpgsqlConnectionStringBuilder(connectionString)), StringComparison.Ordinal);
        }
    }

    /// <summary>
    /// The client APIs that take a connection string (cluster control, messaging, discovery) refuse a bad one the same
    /// way, and carry no inner exception (Npgsql's own message may quote a password fragment, e.g. the tail of an
    /// unquoted ';' as a "keyword", and an exception's ToString, which applications log, shows inner exceptions).
    /// </summary>
    [Theory]
    [InlineData("Host=db;Password=pw;secret-1=x", "cannot be parsed: it has a keyword Npgsql does not know")]
    [InlineData("Host=db;Password=x;Port=secret-1", "cannot be parsed: the value of 'port' is not valid")]
    [InlineData("Host=db Password=pw-secret-1", "cannot be used: its Host holds a space or '='")]
    [InlineData("Username=app;Password=pw-secret-1", "cannot be used: it names no Host")]
    [InlineData("Host=db;Password=pw-secret-1;Target Session Attributes=primary", "a single Host")]
    public async Task The_client_apis_refuse_a_bad_connection_string_by_keyword_without_an_inner_exception(string connectionString, string expected)
    {
        var refusals = new List<ArgumentException>
        {
            Assert.ThrowsAny<ArgumentException>(() => new global::HighlanderPG.Operations.ClusterControl(connectionString)),
            Assert.ThrowsAny<ArgumentException>(() => new global::HighlanderPG.Messaging.SingletonClient(new global::HighlanderPG.Messaging.SingletonClientOptions { ConnectionString = connectionString })),
            await Assert.ThrowsAnyAsync<ArgumentException>(() => global::HighlanderPG.Discovery.LeaderDiscovery.ListAsync(connectionString)),
        };

        Assert.All(refusals, refused =>
        {
            Assert.Contains(expected, refused.Message, StringComparison.Ordinal);
            Assert.Null(refused.InnerException);
            Assert.DoesNotContain("secret-1", refused.ToString(), StringComparison.Ordinal);
        });
    }

    [Fact]
    public void A_client_connection_string_with_several_hosts_is_aimed_at_the_primary()
    {
#pragma warning disable CS0618 // The keyword is how users give it.
        Assert.Equal("primary", ConnectionSettings.ForClient("Host=a,b;Username=app", "c").TargetSessionAttributes);
        Assert.Equal("primary", ConnectionSettings.ForClient("Host=a,b;Username=app;Target Session Attributes=prefer-standby", "c").TargetSessionAttributes);
        Assert.Equal("read-write", ConnectionSettings.ForClient("Host=a,b;Username=app;Target Session Attributes=read-write", "c").TargetSessionAttributes);
#pragma warning restore CS0618
    }

    [Theory]
    [InlineData("Host=/var/run/postgresql;Username=app")]
    [InlineData("Host=/tmp/a dir with spaces;Username=app")]
    [InlineData("Host=db1:5433,db2,[::1]:5432;Username=app")]
    public void Hosts_that_are_addresses_names_or_socket_directories_are_accepted(string connectionString) =>
        Assert.Null(ConnectionSettings.Validate(connectionString));
}
