-- Everything custos' extension script makes, one line per object and property, in a stable
-- order: two databases with equal fingerprints have the same custos schema. (pg_dump leaves an
-- extension's members out of a dump, so it cannot compare them.) ACLs are sorted per object.
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'custos'),
members AS (
    SELECT classid, objid FROM pg_depend
     WHERE refclassid = 'pg_extension'::regclass AND refobjid = (SELECT oid FROM ext) AND deptype = 'e'),
rels AS (SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'custos'::regnamespace),
acl AS (SELECT a, (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(a) x) AS sorted
          FROM (SELECT DISTINCT proacl AS a FROM pg_proc UNION SELECT DISTINCT relacl FROM pg_class
                UNION SELECT DISTINCT attacl FROM pg_attribute) s)
SELECT line FROM (
    SELECT format('function %s md5=%s acl=%s comment=%s', p.oid::regprocedure, md5(pg_get_functiondef(p.oid)),
                  (SELECT sorted FROM acl WHERE acl.a = p.proacl), md5(obj_description(p.oid, 'pg_proc'))) AS line
      FROM pg_proc p WHERE p.oid IN (SELECT objid FROM members WHERE classid = 'pg_proc'::regclass)
    UNION ALL
    SELECT format('relation %s kind=%s rls=%s/%s acl=%s comment=%s', c.oid::regclass, c.relkind, c.relrowsecurity,
                  c.relforcerowsecurity, (SELECT sorted FROM acl WHERE acl.a = c.relacl), md5(obj_description(c.oid, 'pg_class')))
      FROM pg_class c WHERE c.oid IN (SELECT oid FROM rels)
    UNION ALL
    SELECT format('column %s.%s %s notnull=%s default=%s compression=%s acl=%s identity=%s comment=%s', a.attrelid::regclass, a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attcompression,
                  (SELECT sorted FROM acl WHERE acl.a = a.attacl), a.attidentity, md5(col_description(a.attrelid, a.attnum)))
      FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid IN (SELECT oid FROM rels) AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('index %s', pg_get_indexdef(i.indexrelid)) FROM pg_index i WHERE i.indrelid IN (SELECT oid FROM rels)
    UNION ALL
    SELECT format('constraint %s %s %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid))
      FROM pg_constraint c WHERE c.conrelid IN (SELECT oid FROM rels)
    UNION ALL
    SELECT format('trigger %s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
      FROM pg_trigger t WHERE t.tgrelid IN (SELECT oid FROM rels) AND NOT t.tgisinternal
    UNION ALL
    SELECT format('policy %s %s %s %s using=%s check=%s', p.polrelid::regclass, p.polname, p.polcmd, p.polpermissive,
                  pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
      FROM pg_policy p WHERE p.polrelid IN (SELECT oid FROM rels)
    UNION ALL
    SELECT format('view %s %s', c.oid::regclass, md5(pg_get_viewdef(c.oid))) FROM pg_class c
     WHERE c.oid IN (SELECT oid FROM rels) AND c.relkind = 'v'
    UNION ALL
    SELECT format('event trigger %s on %s runs %s tags=%s enabled=%s', e.evtname, e.evtevent, e.evtfoid::regproc,
                  e.evttags, e.evtenabled)
      FROM pg_event_trigger e WHERE e.oid IN (SELECT objid FROM members WHERE classid = 'pg_event_trigger'::regclass)
    UNION ALL
    SELECT format('dumped %s', x::regclass) FROM pg_extension, unnest(extconfig) x WHERE extname = 'custos'
    UNION ALL
    SELECT format('setting %s', row(d.*)) FROM custos.setting_definitions d
    UNION ALL
    SELECT format('member %s', pg_describe_object(classid, objid, 0)) FROM members
) lines
ORDER BY line;
