-- Bulk transfer: one event reads a large result set (rows of --rowbytes, --rows of them).
sysbench.cmdline.options = {
   ["rowbytes"] = {"size of each row in bytes", 1024},
   ["rows"] = {"rows per result set", 1024},
   ["source"] = {"seq: MariaDB's seq_1_to_N table; cte: a recursive CTE (MySQL 8 and MariaDB)", "seq"},
}

function thread_init()
   drv = sysbench.sql.driver()
   con = drv:connect()
end

function event()
   if sysbench.opt.source == "cte" then
      -- a cross join of a short recursive CTE: MySQL stops recursion at 1000 (cte_max_recursion_depth)
      local side = math.ceil(math.sqrt(sysbench.opt.rows))
      con:query(string.format("WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < %d) " ..
                              "SELECT REPEAT('x', %d) FROM s a, s b LIMIT %d",
                              side, sysbench.opt.rowbytes, sysbench.opt.rows))
   else
      con:query(string.format("SELECT REPEAT('x', %d) FROM seq_1_to_%d",
                              sysbench.opt.rowbytes, sysbench.opt.rows))
   end
end

function thread_done()
   con:disconnect()
end
