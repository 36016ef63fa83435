using HighlanderPG.Hosting;

namespace HighlanderPG.Tests.Hosting;

/// <summary>A connection string Npgsql refuses is explained by keyword, never by quoting the string (it may hold a password).</summary>
public sealed class ConnectionStringErrorTests
{
    [Theory]
    [InlineData("Host=db;Password=pw-secret-1;Bogus=1", "cannot be parsed: unknown keyword 'bogus'")]
    [InlineData("Host=db;Password=pw-secret-1;Passwrod=pw-secret-1", "cannot be parsed: unknown keyword 'passwrod'")]
    [InlineData("Host=db;Password=pw-secret-1;Timeout=soon", "cannot be parsed: the value of 'timeout' is not valid")]
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
}
